"""Image grids from validation (input | reconstruction pairs, generated samples), to the logger and as PNG files."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor
from torchvision.utils import make_grid, save_image

from ett_lightning.callbacks.reconstruction import to_unit
from ett_lightning.callbacks.run_dir import run_dir
from ett_lightning.data.batching.batch import ETTBatch
from ett_lightning.training.step_logging import evaluation_rows


class ReconstructionGrid(L.Callback):
    """At each validation, the first ``num_images`` images of the first batch: inputs in odd columns, their
    reconstructions right of them. Saved as ``<run dir>/reconstructions/step_NNNNNNN.png`` and, with a
    TensorBoard logger, as image ``val/reconstructions``.

    Args:
        num_images: images of the first validation batch shown with their reconstructions.
    """

    def __init__(self, num_images: int = 8) -> None:
        super().__init__()
        self.num_images = num_images
        self.directory: Path | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.directory = run_dir(trainer)

    @torch.no_grad()
    def on_validation_batch_end(self, trainer, pl_module, outputs, batch: ETTBatch, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        """Every rank reconstructs (under FSDP the tokenizer's forward is a collective, and a rank's batch may be
        all padding: it reconstructs its padding rows then); rank zero saves its real rows."""
        if batch_idx != 0 or trainer.sanity_checking:
            return
        rows, weight = evaluation_rows(batch)
        images = rows.images[: self.num_images]
        reconstructions, _ = pl_module.tokenizer(images)
        if trainer.is_global_zero and weight:
            pairs = torch.stack([to_unit(images), to_unit(reconstructions)], dim=1).flatten(0, 1)
            save_step_grid(trainer, pairs, self.directory / "reconstructions", "val/reconstructions")


def image_grid(images: Tensor) -> Tensor:
    """Images in [0, 1] -> one grid image, 8 per row, separated by white lines."""
    return make_grid(images.cpu(), nrow=min(8, len(images)), padding=1, pad_value=1.0)


def save_step_grid(trainer: L.Trainer, images: Tensor, folder: Path, tag: str) -> Path:
    """Saves the grid of ``images`` as ``<folder>/step_NNNNNNN.png`` and, with a TensorBoard logger, as image
    ``tag``; returns the file's path."""
    grid = image_grid(images)
    path = folder / f"step_{trainer.global_step:07d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(grid, path)
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(tag, grid, trainer.global_step)
    return path
