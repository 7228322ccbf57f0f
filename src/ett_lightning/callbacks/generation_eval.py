"""Quality of text-to-image generation on validation captions: FID against the real images, and sample grids."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch import nn

from ett_lightning.callbacks.image_grid import save_step_grid
from ett_lightning.callbacks.reconstruction import build_fid, to_unit
from ett_lightning.callbacks.run_dir import run_dir
from ett_lightning.callbacks.synced_metrics import log_synced
from ett_lightning.data.batching.batch import ETTBatch
from ett_lightning.distributed.fsdp2 import is_sharded


class GenerationMetrics(L.Callback):
    """At each validation, generates an image from the caption of every sample in the first ``max_batches``
    batches (sampling is slow: N sequential LLM steps) with the module's sampling settings, seeded per batch.

    Logs ``val/gfid``, the FID between those generated images and the real validation images (the same Inception
    machinery and weights as rFID, see :func:`build_fid`), and saves the first ``num_images`` generations of
    the first batch as ``<run dir>/samples/step_NNNNNNN.png`` with their captions in a ``.txt`` beside it (and as
    image ``val/samples`` with a TensorBoard logger). The module must provide ``generate_images(batch, seed)``,
    as :class:`TextToImage` does. Skipped during the sanity check.

    Args:
        fid: compute ``val/gfid``.
        fid_weights: local Inception weights file for FID (``pt_inception-2015-12-05-6726825d.pth``).
        fid_feature_extractor: a feature extractor module instead of Inception (tests).
        max_batches: validation batches whose captions are generated from.
        num_images: generations saved as the sample grid.
        seed: seed of the sampling, per batch.
    """

    def __init__(self, fid: bool = True, fid_weights: str | None = None, fid_feature_extractor: nn.Module | None = None,
                 max_batches: int = 4, num_images: int = 16, seed: int = 0) -> None:
        super().__init__()
        self.use_fid = fid
        self.fid_weights = fid_weights
        self.fid_feature_extractor = fid_feature_extractor
        self.max_batches = max_batches
        self.num_images = num_images
        self.seed = seed
        self.fid = None
        self.directory: Path | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.directory = run_dir(trainer)
        if not hasattr(pl_module, "generate_images"):
            raise TypeError(f"GenerationMetrics needs a module with generate_images(batch, seed), such as "
                            f"TextToImage; {type(pl_module).__name__} has none")
        if self.use_fid:
            self.fid = build_fid(self.fid_weights, self.fid_feature_extractor).to(pl_module.device)

    @torch.no_grad()
    def on_validation_batch_end(self, trainer, pl_module, outputs, batch: ETTBatch, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        if trainer.sanity_checking or batch_idx >= self.max_batches:
            return
        real = batch.without_padding()
        if not len(real):
            if is_sharded(pl_module):  # generation is a collective: sample for the padded batch, keep nothing
                pl_module.generate_images(batch, seed=self.seed + batch_idx)
            return
        batch = real
        generated, captions = pl_module.generate_images(batch, seed=self.seed + batch_idx)
        generated = to_unit(generated)
        if self.fid is not None:
            self.fid.update(to_unit(batch.images), real=True)
            self.fid.update(generated, real=False)
        if batch_idx == 0 and trainer.is_global_zero:
            self.save_samples(trainer, generated[: self.num_images], captions[: self.num_images])

    def save_samples(self, trainer: L.Trainer, images: torch.Tensor, captions: list[str]) -> None:
        path = save_step_grid(trainer, images, self.directory / "samples", "val/samples")
        path.with_suffix(".txt").write_text("".join(f"{i}: {c}\n" for i, c in enumerate(captions)), encoding="utf-8")

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self.fid is not None:
            log_synced(trainer, pl_module, {"gfid": self.fid})
