"""Where a run's files go, resolved the same way on every DDP rank, and whether an earlier run is there."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.plugins.environments import SLURMEnvironment


def run_dir(trainer: L.Trainer) -> Path:
    """The first logger's version directory (TensorBoard, CSV), another logger's ``save_dir``, or, without a
    logger, ``default_root_dir``: where Lightning puts the run's checkpoints too.

    A collective under DDP: ``Trainer.log_dir`` broadcasts rank 0's answer, since other ranks may not know the
    logger's version. Call it from a hook every rank runs (``setup``) and keep the result; called from a
    rank-zero-only hook, or a branch some ranks skip, it waits forever for the other ranks.
    """
    return Path(trainer.log_dir or trainer.default_root_dir)


def earlier_run(directory: Path, config_files: list[Path], default_root_dir: str | Path) -> str:
    """What in a fresh fit's run ``directory`` belongs to an earlier run it would write over, or "".

    A run's checkpoints or ``metrics.json`` (the fit would mix its checkpoints with them as ``-v1`` names and replace
    the record), or the ``config.yaml`` of another run (a copied config that kept the old directory). A fresh fit
    started from the ``config.yaml`` it will write, before it wrote anything else (as ``ett demo`` starts each run),
    and Lightning's SLURM requeue (a fit without ``--ckpt_path`` that resumes an ``hpc_ckpt_*.ckpt``) take nothing.
    """
    if SLURMEnvironment.detect() and any(Path(default_root_dir).glob("hpc_ckpt_*.ckpt")):
        return ""
    checkpoints = sorted(path.name for path in (directory / "checkpoints").glob("*.ckpt"))
    finished = [*(["metrics.json"] if (directory / "metrics.json").is_file() else []), *checkpoints[:3]]
    if finished:
        return ", ".join(finished)
    config = directory / "config.yaml"
    inputs = {Path(path).resolve() for path in config_files}
    return config.name if config.is_file() and config.resolve() not in inputs else ""
