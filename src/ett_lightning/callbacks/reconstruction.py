"""Reconstruction quality of the tokenizer on validation images: PSNR, SSIM and rFID."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics.image import FrechetInceptionDistance, PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from ett_lightning.callbacks.synced_metrics import log_synced
from ett_lightning.data.batching.batch import ETTBatch
from ett_lightning.metrics import CodebookUsage, MeanImagePSNR
from ett_lightning.training.step_logging import evaluation_rows


def build_fid(weights_path: str | None, feature_extractor: nn.Module | None) -> FrechetInceptionDistance:
    """torchmetrics FID on Inception features from ``weights_path`` (torch-fidelity's
    ``weights-inception-2015-12-05-6726825d.pth``), or on a custom ``feature_extractor`` (inputs in [0, 1])."""
    if feature_extractor is not None:
        return FrechetInceptionDistance(feature=feature_extractor, normalize=True, sync_on_compute=True)
    if weights_path is not None and not Path(weights_path).is_file():
        raise FileNotFoundError(f"FID Inception weights not found at {weights_path}")
    try:
        return FrechetInceptionDistance(feature=2048, normalize=True, feature_extractor_weights_path=weights_path)
    except Exception as err:  # torch-fidelity raises URL / OS / runtime errors when it cannot download
        raise FileNotFoundError(
            "rFID needs the Inception weights torch-fidelity uses (weights-inception-2015-12-05-6726825d.pth), "
            "which could not be downloaded (offline?). Copy the file to this machine and set "
            "`fid_weights: /path/to/weights-inception-2015-12-05-6726825d.pth`, give a `fid_feature_extractor`, "
            "or set `fid: false`."
        ) from err


class ReconstructionMetrics(L.Callback):
    """Reconstructs each validation batch with the tokenizer and logs, as tokenizer papers report them (e.g.
    LlamaGen's evaluation), on reconstructions rounded to 8-bit images:

    - ``val/psnr``: PSNR of each image, averaged over images (:class:`MeanImagePSNR`);
    - ``val/ssim``: SSIM of each image (Gaussian window 11, sigma 1.5), averaged over images;
    - ``val/psnr_pooled``: PSNR of the MSE pooled over all images (torchmetrics' default);
    - ``val/rfid``: FID between the inputs and the 8-bit reconstructions;
    - ``val/epoch_codebook_usage`` / ``val/epoch_codebook_perplexity`` over the whole validation set (the
      module's ``val/codebook_usage`` is a per-batch average).

    Images are compared in [0, 1]. Everything runs in validation only; the training step is untouched. FID is
    built in ``setup``, so missing weights fail before training starts, with the fix in the message.

    Args:
        fid: compute ``val/rfid``.
        fid_weights: local Inception weights file for FID (``pt_inception-2015-12-05-6726825d.pth``).
        fid_feature_extractor: a feature extractor module instead of Inception (tests).
        max_batches: validation batches reconstructed (None: all).
    """

    def __init__(self, fid: bool = True, fid_weights: str | None = None, fid_feature_extractor: nn.Module | None = None,
                 max_batches: int | None = None) -> None:
        super().__init__()
        self.use_fid = fid
        self.fid_weights = fid_weights
        self.fid_feature_extractor = fid_feature_extractor
        self.max_batches = max_batches
        self.metrics = nn.ModuleDict()

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.metrics["psnr"] = MeanImagePSNR(data_range=1.0)
        self.metrics["psnr_pooled"] = PeakSignalNoiseRatio(data_range=1.0)
        self.metrics["ssim"] = StructuralSimilarityIndexMeasure(data_range=1.0)
        self.metrics["epoch_codebook"] = CodebookUsage(pl_module.tokenizer.codebook_size)
        if self.use_fid:
            self.metrics["rfid"] = build_fid(self.fid_weights, self.fid_feature_extractor)
        self.metrics.to(pl_module.device)

    @torch.no_grad()
    def on_validation_batch_end(self, trainer, pl_module, outputs, batch: ETTBatch, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        if self.max_batches is not None and batch_idx >= self.max_batches:
            return
        batch, weight = evaluation_rows(batch)  # a batch of padding runs too: a sharded forward is a collective
        reconstructions, encoded = pl_module.tokenizer(batch.images)
        if weight:
            self.metrics["epoch_codebook"].update(encoded.indices)
            self.update(to_unit(batch.images), to_unit(reconstructions))

    def update(self, images: Tensor, reconstructions: Tensor) -> None:
        """Images and reconstructions in [0, 1]; both are rounded to 8 bits first."""
        images, reconstructions = to_8bit(images), to_8bit(reconstructions)
        for name in ("psnr", "psnr_pooled", "ssim"):
            self.metrics[name].update(reconstructions, images)
        if "rfid" in self.metrics:
            self.metrics["rfid"].update(images, real=True)
            self.metrics["rfid"].update(reconstructions, real=False)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        log_synced(trainer, pl_module, self.metrics)


def to_unit(images: Tensor) -> Tensor:
    """[-1, 1] -> [0, 1], float32, clamped."""
    return ((images.float() + 1.0) / 2.0).clamp(0.0, 1.0)


def to_8bit(images: Tensor) -> Tensor:
    """[0, 1] images rounded to the nearest of the 256 levels an 8-bit image file holds (still floats in [0, 1]):
    what a reconstruction saved as PNG, as the reference evaluations do, would read back as."""
    return torch.floor(images * 255.0 + 0.5).clamp(0.0, 255.0) / 255.0
