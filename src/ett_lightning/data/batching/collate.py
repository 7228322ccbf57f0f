"""Collation of decoded samples into an :class:`ETTBatch`: one sample per row, or packed rows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ett_lightning.data.batching.batch import ETTBatch
from ett_lightning.data.batching.packed_segments import PackedSegments
from ett_lightning.data.batching.packing import pack_rows
from ett_lightning.data.sequences.token_sequence import IGNORE_INDEX, TokenSequence
from ett_lightning.data.skips import SkipCounter


class Collator:
    """Stacks the [H, W, 3] uint8 images into a [B, 3, H, W] view (channels-last strides, no transposing copy),
    lays the token sequences out in right-padded rows, and stamps the batch with the worker's recent skip count.

    With ``pack_length`` the samples are packed (:func:`pack_rows`): several per row, each with position ids from
    0, and the batch's samples (images, answers, keys) reordered to the order their tokens take in the rows, which
    is the order the image slots are filled in.
    """

    def __init__(self, pad_id: int, skips: SkipCounter, num_image_tokens: int, pack_length: int | None = None) -> None:
        self.pad_id = pad_id
        self.skips = skips
        self.num_image_tokens = num_image_tokens
        self.pack_length = pack_length

    def __call__(self, samples: Sequence[dict[str, Any]]) -> ETTBatch:
        lengths = [len(s["sequence"]) for s in samples]
        rows = pack_rows(lengths, self.pack_length) if self.pack_length else [[i] for i in range(len(samples))]
        samples = [samples[i] for row in rows for i in row]
        tokens = self.layout([s["sequence"] for s in samples], [len(row) for row in rows])
        return ETTBatch(
            images=torch.from_numpy(np.stack([s["image"] for s in samples])).permute(0, 3, 1, 2),
            **tokens,
            target_starts=torch.tensor([s["sequence"].target_start for s in samples]),
            answers=[s["answers"] for s in samples],
            tasks=[s["task"] for s in samples],
            answer_types=[s.get("answer_type", "") for s in samples],
            keys=[s["key"] for s in samples],
            question_ids=[s.get("question_id") for s in samples],
            skipped=self.skips.take(),
            truncated=self.skips.take_truncated(),
            padding=[bool(s.get("padding", False)) for s in samples],
        )

    def place_text(self, sequence: TokenSequence, input_ids: np.ndarray, labels: np.ndarray) -> int:
        """Writes the tokens around the image slots into rows that hold the pad id and -100 already, which is what
        a slot is; returns the sequence's length."""
        if sequence.num_slots != self.num_image_tokens:
            raise ValueError(f"a sequence with {sequence.num_slots} image slots in a batch of images of "
                             f"{self.num_image_tokens} tokens: it was built for another image size")
        before, after = sequence.slot_start, sequence.slot_start + sequence.num_slots
        end = len(sequence)
        input_ids[:before], labels[:before] = sequence.text_ids[:before], sequence.text_labels[:before]
        input_ids[after:end], labels[after:end] = sequence.text_ids[before:], sequence.text_labels[before:]
        return end

    def layout(self, sequences: list[TokenSequence], row_sizes: list[int]) -> dict[str, Tensor | PackedSegments]:
        """``input_ids``, ``attention_mask``, ``labels``, ``image_slots`` [rows, width]: the sequences end to end,
        ``row_sizes[r]`` of them in row ``r``; packed rows also get ``position_ids`` restarting at each sample (the
        pads after the last sample count as one more, unlabelled, sample) and their ``packed_segments``."""
        starts = np.cumsum([0] + row_sizes)
        lengths = [[len(q) for q in sequences[a:b]] for a, b in zip(starts[:-1], starts[1:])]
        width = max(sum(row) for row in lengths)
        shape = (len(row_sizes), width)
        input_ids, labels = np.full(shape, self.pad_id, dtype=np.int64), np.full(shape, IGNORE_INDEX, dtype=np.int64)
        attention_mask, position_ids = np.zeros(shape, dtype=np.int64), np.zeros(shape, dtype=np.int64)
        image_slots = np.zeros(shape, dtype=bool)
        for row, (first, last) in enumerate(zip(starts[:-1], starts[1:])):
            offset = 0
            for q in sequences[first:last]:
                if self.pack_length and q.slot_start > 0 and q.text_labels[0] != IGNORE_INDEX:
                    raise ValueError("a packed sample must start with an unlabelled token, or the sample before it "
                                     "would learn to predict it")
                end = self.place_text(q, input_ids[row, offset:], labels[row, offset:])
                attention_mask[row, offset:offset + end] = 1
                position_ids[row, offset:offset + end] = np.arange(end)
                image_slots[row, offset + q.slot_start: offset + q.slot_start + self.num_image_tokens] = True
                offset += end
            position_ids[row, offset:] = np.arange(width - offset)
        tokens = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
                  "image_slots": image_slots}
        if not self.pack_length:
            return {name: torch.from_numpy(array) for name, array in tokens.items()}
        tokens["position_ids"] = position_ids
        return {**{name: torch.from_numpy(array) for name, array in tokens.items()},
                "packed_segments": PackedSegments.from_lengths(lengths, width)}
