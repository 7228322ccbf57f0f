"""Right-padding collation of decoded samples into an :class:`ETTBatch`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ett_lightning.data.batch import ETTBatch
from ett_lightning.data.sequence import IGNORE_INDEX
from ett_lightning.data.skips import SkipCounter


class Collator:
    """Stacks the [H, W, 3] uint8 images into a [B, 3, H, W] view (channels-last strides, no transposing copy),
    right-pads token sequences, and stamps the batch with the worker's recent skip count."""

    def __init__(self, pad_id: int, skips: SkipCounter, num_image_tokens: int) -> None:
        self.pad_id = pad_id
        self.skips = skips
        self.num_image_tokens = num_image_tokens

    def __call__(self, samples: Sequence[dict[str, Any]]) -> ETTBatch:
        sequences = [s["sequence"] for s in samples]
        width = max(len(q.input_ids) for q in sequences)
        input_ids = np.full((len(samples), width), self.pad_id, dtype=np.int64)
        labels = np.full((len(samples), width), IGNORE_INDEX, dtype=np.int64)
        attention_mask = np.zeros((len(samples), width), dtype=np.int64)
        image_slots = np.zeros((len(samples), width), dtype=bool)
        for row, q in enumerate(sequences):
            input_ids[row, : len(q.input_ids)] = q.input_ids
            labels[row, : len(q.labels)] = q.labels
            attention_mask[row, : len(q.input_ids)] = 1
            image_slots[row, q.slot_start : q.slot_start + self.num_image_tokens] = True
        return ETTBatch(
            images=torch.from_numpy(np.stack([s["image"] for s in samples])).permute(0, 3, 1, 2),
            input_ids=torch.from_numpy(input_ids),
            attention_mask=torch.from_numpy(attention_mask),
            labels=torch.from_numpy(labels),
            image_slots=torch.from_numpy(image_slots),
            target_starts=torch.tensor([q.target_start for q in sequences]),
            answers=[s["answers"] for s in samples],
            tasks=[s["task"] for s in samples],
            answer_types=[s.get("answer_type", "") for s in samples],
            keys=[s["key"] for s in samples],
            question_ids=[s.get("question_id") for s in samples],
            skipped=self.skips.take(),
            padding=[bool(s.get("padding", False)) for s in samples],
        )
