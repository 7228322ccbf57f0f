"""``metrics.csv`` that survives a resume: the rows an interrupted run wrote stay when ``--ckpt_path=last`` goes on."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only


class ResumedCSVLogger(CSVLogger):
    """Lightning's CSVLogger, except that it keeps what ``metrics.csv`` already holds.

    Lightning's deletes the file when it opens a directory that has one, so a run resumed in its own directory
    (``--ckpt_path=last`` after a preemption) kept only the rows logged after the restart, and its loss curves
    started there. This one reads the earlier rows before that, and puts back those logged before the first step
    the resumed run logs; rows of steps the resumed run trains again (after its checkpoint, before the stop) are
    replaced by the new ones. An unreadable or foreign file is left to Lightning (and so deleted), never a crash.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._earlier: list[dict[str, Any]] | None = None

    @property
    def experiment(self) -> Any:
        if self._experiment is None and self._earlier is None:
            self._earlier = earlier_rows(Path(self.log_dir) / "metrics.csv")  # before Lightning deletes the file
        return CSVLogger.experiment.fget(self)

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        writer = self.experiment
        if self._earlier:
            first = len(writer.metrics) if step is None else step
            writer.metrics[:0] = [row for row in self._earlier if row["step"] < first]
        self._earlier = []
        super().log_metrics(metrics, step)


def earlier_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.csv`` Lightning wrote, as written (empty cells left out, ``step`` an int); none when
    there is no such file or it is not one (a row without a whole-number step)."""
    try:
        with open(path, newline="") as file:
            rows = [{key: value for key, value in row.items() if key and value} for row in csv.DictReader(file)]
        for row in rows:
            row["step"] = int(row["step"])
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError, csv.Error):
        return []
    return rows
