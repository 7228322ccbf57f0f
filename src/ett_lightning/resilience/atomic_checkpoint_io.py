"""Checkpoint files that a kill cannot corrupt (:mod:`ett_lightning.checkpoints.atomic`), as Lightning's writer."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ett_lightning.checkpoints.atomic import remove_stale, sync_directory, temporary_path

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Local checkpoints are written to ``.<name>.tmp-<pid>`` beside the target, flushed to disk and renamed over
    it, and the directory is synced: ``last.ckpt`` is always the previous complete file or the new complete file.
    The first write into a directory removes the temporaries that killed processes left there (a SIGKILL leaves one
    the size of a checkpoint per process).

    Lightning's own writer stages through the system temp directory and moves the file, which is a copy (not
    atomic) when the checkpoint directory is on another filesystem, as on clusters with node-local /tmp.
    Remote URLs (``s3://`` ...) go through Lightning's writer.
    """

    def __init__(self) -> None:
        super().__init__()
        self.swept: set[Path] = set()

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if get_filesystem(path).protocol not in ("file", ("file", "local")):
            return super().save_checkpoint(checkpoint, path, storage_options)
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.parent not in self.swept:
            self.swept.add(target.parent)
            for stale in remove_stale(target.parent):
                log.warning("removed %s, left by a process that was killed while writing a checkpoint", stale)
        temporary = temporary_path(target)
        try:
            with open(temporary, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, target)
            sync_directory(target.parent)
        finally:
            temporary.unlink(missing_ok=True)
