"""Writes every scalar metric to ``<run dir>/metrics.json`` after each validation."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

from ett_lightning.callbacks.run_dir import run_dir


class MetricsJSON(L.Callback):
    """``metrics.json`` holds the latest value of every logged scalar plus ``step`` and ``epoch`` after each
    validation (not the sanity check's); written atomically (temp file, then rename) so a reader never sees half a
    file.

    Args:
        filename: name of the file in the run directory.
    """

    def __init__(self, filename: str = "metrics.json") -> None:
        super().__init__()
        self.filename = filename
        self.directory: Path | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.directory = run_dir(trainer)

    @rank_zero_only
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:  # a check of the loop, not a measurement (Lightning logs none of it either)
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
        payload = {"step": trainer.global_step, "epoch": trainer.current_epoch, **dict(sorted(metrics.items()))}
        write_json_atomically(self.directory / self.filename, payload)


def write_json_atomically(path: Path, payload: Any) -> None:
    """``payload`` as JSON at ``path`` through a temporary file and a rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)
