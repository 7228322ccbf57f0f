"""The typed batch every ETT module consumes."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class ETTBatch:
    """One collated batch; Lightning moves its tensors to the device.

    ``images`` [B, 3, H, W] in [-1, 1]. ``input_ids``/``attention_mask``/``labels``/``image_slots`` [B, L], right
    padded: ``image_slots`` marks where the codebook embeddings go, ``labels`` is -100 everywhere except the
    target text (caption or answer) and its EOS. ``target_starts`` [B] is the first target position, so
    generation can feed the prompt alone. ``answers`` keeps every reference answer for VQA evaluation, ``keys``
    the samples' ``__key__``. ``skipped`` counts samples the producing worker dropped since its previous batch.
    """

    images: Tensor
    input_ids: Tensor
    attention_mask: Tensor
    labels: Tensor
    image_slots: Tensor
    target_starts: Tensor
    answers: list[list[str]] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    skipped: int = 0

    def __len__(self) -> int:
        return self.images.shape[0]
