"""``metrics.csv`` that survives a resume: the rows an interrupted run wrote stay when ``--ckpt_path=last`` goes on."""

from __future__ import annotations

import contextlib
import csv
import os
import warnings
from pathlib import Path
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger


class ResumedCSVLogger(CSVLogger):
    """Lightning's CSVLogger, except that it keeps what ``metrics.csv`` already holds.

    Lightning's deletes the file when it opens a directory that has one, so a run resumed in its own directory
    (``--ckpt_path=last`` after a preemption) kept only the rows logged after the restart, and its loss curves
    started there. This one puts the earlier rows back as soon as Lightning has deleted them (a resumed run that
    stops before it logs loses nothing), less those of steps from ``resumed_step`` on, which the resumed run
    trains again. A file that is not Lightning's (no whole-number ``step`` in every row), or a link, is not read
    and is left to Lightning, which deletes it.

    Args:
        resumed_step: the global step of the checkpoint the run resumes from (0 for a fit from the start: no
            row is kept); None keeps every row (a ``validate`` in a fit's directory).
    """

    def __init__(self, *args: Any, resumed_step: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.resumed_step = resumed_step

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        if self._experiment is not None:
            return self._experiment
        path = Path(self.log_dir) / "metrics.csv"
        kept = path.with_name("metrics.csv.kept")
        if not path.exists() and kept.is_file() and not kept.is_symlink():
            os.replace(kept, path)  # rows an earlier start had set aside when it was stopped
        header = copy_rows(path, kept, self.resumed_step)
        with warnings.catch_warnings():  # "Previous log files in this directory will be deleted": not this one
            warnings.filterwarnings("ignore", message="Experiment logs directory")
            writer = CSVLogger.experiment.fget(self)
        if header:
            os.replace(kept, path)
            writer.metrics_keys = header
        return writer


def copy_rows(source: Path, target: Path, before_step: int | None) -> list[str] | None:
    """Copies the header and the rows of a Lightning ``metrics.csv`` at ``source`` whose step is below
    ``before_step`` (every row when None) to ``target``, line by line; returns the header, or None (and no
    ``target``) when ``source`` is missing, a link or not such a file."""
    if source.is_symlink() or not source.is_file():
        return None
    try:
        with contextlib.suppress(FileNotFoundError):
            target.unlink()  # a file or link left there; "x" below never writes through one
        with open(source, newline="") as rows, open(target, "x", newline="") as out:
            reader, writer = csv.reader(rows), csv.writer(out)
            header = next(reader)
            at = header.index("step")
            writer.writerow(header)
            for row in reader:
                if len(row) != len(header):
                    raise ValueError("a row of another width")
                if before_step is None or int(row[at]) < before_step:
                    writer.writerow(row)
    except (OSError, UnicodeDecodeError, ValueError, StopIteration, csv.Error):
        with contextlib.suppress(OSError):
            target.unlink()
        return None
    return header
