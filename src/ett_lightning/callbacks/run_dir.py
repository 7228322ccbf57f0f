"""Where a run's files go, resolved the same way on every DDP rank."""

from __future__ import annotations

from pathlib import Path

import lightning as L


def run_dir(trainer: L.Trainer) -> Path:
    """The first logger's version directory (TensorBoard, CSV), another logger's ``save_dir``, or, without a
    logger, ``default_root_dir``: where Lightning puts the run's checkpoints too.

    A collective under DDP: ``Trainer.log_dir`` broadcasts rank 0's answer, since other ranks may not know the
    logger's version. Call it from a hook every rank runs (``setup``) and keep the result; called from a
    rank-zero-only hook, or a branch some ranks skip, it waits forever for the other ranks.
    """
    return Path(trainer.log_dir or trainer.default_root_dir)
