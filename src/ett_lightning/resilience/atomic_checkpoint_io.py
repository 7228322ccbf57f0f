"""Checkpoint writes that a kill cannot corrupt: a temporary file in the target directory, then a rename."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """Local checkpoints are written to ``.<name>.tmp-<pid>`` beside the target, flushed to disk and renamed over
    it, so ``last.ckpt`` is always the previous complete file or the new complete file.

    Lightning's own writer stages through the system temp directory and moves the file, which is a copy (not
    atomic) when the checkpoint directory is on another filesystem, as on clusters with node-local /tmp.
    Remote URLs (``s3://`` ...) go through Lightning's writer.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if get_filesystem(path).protocol not in ("file", ("file", "local")):
            return super().save_checkpoint(checkpoint, path, storage_options)
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        try:
            with open(temporary, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, target)
        finally:
            temporary.unlink(missing_ok=True)
