"""Generated images on disk: PNG files from ``lightning predict`` with a text-to-image module."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter
from torchvision.utils import save_image

from ett_lightning.callbacks.image_grid import image_grid
from ett_lightning.callbacks.reconstruction import to_unit
from ett_lightning.callbacks.run_dir import run_dir


def file_stem(key: str, prompt: str, length: int = 48) -> str:
    """A file-name-safe ``<key>_<start of the prompt>``."""
    safe = re.sub(r"[^A-Za-z0-9]+", "-", f"{key}_{prompt}").strip("-")
    return safe[:length] or "image"


class GeneratedImageWriter(BasePredictionWriter):
    """Writes every predicted image as ``<output_dir>/<key>_<prompt>.png``, one grid per batch
    (``grid_<rank>_<batch>.png``) and a line per image to ``prompts.jsonl`` (file, prompt, key); under DDP each
    rank writes its own ``prompts.rank<r>.jsonl``, so no two processes append to one file.

    ``output_dir`` defaults to ``<run dir>/predictions``. Expects predictions as :class:`TextToImage` returns
    them: ``{"images": [B, 3, H, W] in [-1, 1], "prompts": [...], "keys": [...]}``.

    Args:
        output_dir: folder of the PNGs (default ``<run dir>/predictions``).
        grid: also write one grid image per batch.
    """

    def __init__(self, output_dir: str | None = None, grid: bool = True) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self.grid = grid
        self.directory: Path | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.directory = Path(self.output_dir) if self.output_dir else run_dir(trainer) / "predictions"

    @staticmethod
    def index_name(trainer: L.Trainer) -> str:
        return "prompts.jsonl" if trainer.world_size == 1 else f"prompts.rank{trainer.global_rank}.jsonl"

    def write_on_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: dict[str, Any],
                           batch_indices: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if not len(prediction["images"]):
            return
        out = self.directory
        out.mkdir(parents=True, exist_ok=True)
        images = to_unit(prediction["images"])
        lines = []
        for image, prompt, key in zip(images, prediction["prompts"], prediction["keys"]):
            path = out / f"{file_stem(key, prompt)}.png"
            save_image(image, path)
            lines.append(json.dumps({"file": path.name, "prompt": prompt, "key": key}))
        with open(out / self.index_name(trainer), "a", encoding="utf-8") as index:
            index.write("".join(line + "\n" for line in lines))
        if self.grid:
            save_image(image_grid(images), out / f"grid_{trainer.global_rank}_{batch_idx:04d}.png")
