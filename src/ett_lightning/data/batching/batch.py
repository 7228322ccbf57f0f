"""The typed batch every ETT module consumes."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from ett_lightning.data.batching.packed_segments import PackedSegments
from ett_lightning.data.streaming.transforms import to_model_range

TENSOR_FIELDS = ("images", "input_ids", "attention_mask", "labels", "image_slots", "target_starts")
LIST_FIELDS = ("answers", "tasks", "answer_types", "keys", "question_ids", "padding")


@dataclass
class ETTBatch:
    """One collated batch; Lightning moves its tensors to the device.

    ``images`` [B, 3, H, W]: uint8 as collated (4x fewer bytes through worker queues and host-to-device copies),
    float in [-1, 1] after :meth:`normalized`, which the datamodule applies on the device.
    ``input_ids``/``attention_mask``/``labels``/``image_slots`` [B, L], right padded: ``image_slots`` marks where
    the codebook embeddings go, ``labels`` is -100 everywhere except the target text (caption or answer) and its
    EOS. ``target_starts`` [B] is the first target position, so generation can feed the prompt alone. ``answers``
    keeps every reference answer for VQA evaluation and ``answer_types`` their type ("" when the data has none),
    ``keys`` the samples' ``__key__``, ``question_ids`` the json's ``question_id`` (None without one).
    ``skipped`` counts samples the producing worker dropped since its previous batch, ``truncated`` those whose
    text it cut to ``max_text_tokens``. ``padding`` marks rows that
    only fill a validation split up to the same length on every DDP rank (see :class:`EvenSplit`); evaluation drops
    them with :meth:`without_padding`. Empty means no padding rows.

    A packed batch (training with ``pack_length``, see :class:`Collator`) has fewer token rows than samples:
    ``position_ids`` [rows, L] restart at 0 at each sample, the image slots are filled in row-major order (the
    order of ``images``), and the per-sample fields (``target_starts``, ``answers``, ...) follow ``images``.
    ``position_ids`` is None for one sample per row. ``packed_segments`` (None unless packed) maps the packed
    positions to the samples, so attention can run sample by sample.
    """

    images: Tensor
    input_ids: Tensor
    attention_mask: Tensor
    labels: Tensor
    image_slots: Tensor
    target_starts: Tensor
    answers: list[list[str]] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    answer_types: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    question_ids: list = field(default_factory=list)
    skipped: int = 0
    truncated: int = 0
    padding: list[bool] = field(default_factory=list)
    position_ids: Tensor | None = None
    packed_segments: PackedSegments | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    def normalized(self) -> ETTBatch:
        """The batch with uint8 images scaled to the tokenizer's [-1, 1]; float images are returned as they are."""
        if self.images.is_floating_point():
            return self
        return replace(self, images=to_model_range(self.images))

    @property
    def num_real(self) -> int:
        """Rows that are data, not padding."""
        return len(self) - sum(self.padding)

    def without_padding(self) -> ETTBatch:
        """The batch restricted to its real rows (itself when it has no padding; empty when it is all padding)."""
        if not any(self.padding):
            return self
        return self.select([row for row, pad in enumerate(self.padding) if not pad])

    @property
    def packed(self) -> bool:
        return self.position_ids is not None

    def select(self, rows: list[int]) -> ETTBatch:
        """The batch restricted to ``rows``, in that order (one sample per row only)."""
        if self.packed:
            raise ValueError("a packed batch cannot be split by sample; evaluation batches are never packed")
        index = torch.tensor(rows, dtype=torch.long, device=self.images.device)
        tensors = {name: getattr(self, name).index_select(0, index) for name in TENSOR_FIELDS}
        lists = {name: [getattr(self, name)[row] for row in rows] if getattr(self, name) else []
                 for name in LIST_FIELDS}
        return replace(self, **tensors, **lists)
