"""``lightning predict`` writes what it predicts: ``<run dir>/predictions.jsonl``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor

from ett_lightning.callbacks.run_dir import run_dir
from ett_lightning.callbacks.synced_metrics import gather_objects


class PredictionWriter(BasePredictionWriter):
    """Collects the text fields of every ``predict_step`` output (a list of row dicts, as ``ETTModule`` returns, or
    a dict of per-row lists, as ``TextToImage`` returns) and, after the epoch, writes the rows of all ranks as JSON
    lines to ``<run dir>/<file_name>``. Tensors (generated images) are left out: ``GeneratedImageWriter`` saves them.

    The CLI adds one to every ``predict`` run that configures no prediction writer of its own.

    Args:
        file_name: the file in the run directory.
    """

    def __init__(self, file_name: str = "predictions.jsonl") -> None:
        super().__init__(write_interval="batch")
        self.file_name = file_name
        self.rows: list[dict[str, Any]] = []
        self.directory: Path | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Starts empty: rows an interrupted earlier run collected are not this run's."""
        self.directory = run_dir(trainer)
        self.rows = []

    def write_on_batch_end(self, trainer, pl_module, prediction: Any, batch_indices, batch, batch_idx: int,
                           dataloader_idx: int = 0) -> None:
        self.rows += text_rows(prediction)

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        rows, self.rows = gather_objects(self.rows), []
        if trainer.is_global_zero:
            self.directory.mkdir(parents=True, exist_ok=True)
            with (self.directory / self.file_name).open("w", encoding="utf-8") as out:
                out.writelines(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows)


def text_rows(prediction: Any) -> list[dict[str, Any]]:
    """Row dicts without tensors, from a list of rows or a dict of per-row lists."""
    if isinstance(prediction, dict):
        columns = {name: values for name, values in prediction.items() if not isinstance(values, Tensor)}
        return [dict(zip(columns, values)) for values in zip(*columns.values())]
    return [{name: value for name, value in row.items() if not isinstance(value, Tensor)} for row in prediction or []]
