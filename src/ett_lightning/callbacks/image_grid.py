"""Input | reconstruction pictures from validation, to the logger and as PNG files a person can open."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from torchvision.utils import make_grid, save_image

from ett_lightning.callbacks.metrics_json import run_dir
from ett_lightning.callbacks.reconstruction import to_unit
from ett_lightning.data.batch import ETTBatch


class ReconstructionGrid(L.Callback):
    """At each validation, the first ``num_images`` images of the first batch: inputs in odd columns, their
    reconstructions right of them. Saved as ``<run dir>/reconstructions/step_NNNNNNN.png`` and, with a
    TensorBoard logger, as image ``val/reconstructions``."""

    def __init__(self, num_images: int = 8) -> None:
        super().__init__()
        self.num_images = num_images

    @rank_zero_only
    @torch.no_grad()
    def on_validation_batch_end(self, trainer, pl_module, outputs, batch: ETTBatch, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        if batch_idx != 0 or trainer.sanity_checking:
            return
        images = batch.images[: self.num_images]
        reconstructions, _ = pl_module.tokenizer(images)
        pairs = torch.stack([to_unit(images), to_unit(reconstructions)], dim=1).flatten(0, 1)
        grid = make_grid(pairs.cpu(), nrow=min(8, 2 * len(images)), padding=1, pad_value=1.0)
        path = run_dir(trainer) / "reconstructions" / f"step_{trainer.global_step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(grid, path)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("val/reconstructions", grid, trainer.global_step)
