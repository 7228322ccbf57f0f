"""Checkpoint folders, as ``FSDP2Strategy(save_distributed_checkpoint=True)`` writes them: torch.distributed.checkpoint
files of every rank's shards (``.metadata`` names what is where) beside Lightning's ``meta.pt`` (step, loops,
callbacks, hyperparameters). Read here in one process, without a process group, by what also reads one-file
checkpoints: the resume check, ``init_from`` and ``ett export``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor


def is_checkpoint_folder(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / ".metadata").is_file()


def folder_metadata(folder: str | Path) -> dict[str, Any]:
    """Everything but the tensors of weights and optimizer states (``meta.pt``, read weights-only)."""
    meta = Path(folder) / "meta.pt"
    if not meta.is_file():
        raise ValueError(f"{folder} is a checkpoint folder without meta.pt (incomplete, or not written by Lightning)")
    return torch.load(meta, map_location="cpu", weights_only=True)


def folder_weights(folder: str | Path) -> dict[str, Tensor]:
    """The module's whole weights (the ``state_dict`` entries; optimizer states are not read), on CPU."""
    import torch.distributed.checkpoint as dcp

    reader = dcp.FileSystemReader(str(folder))
    entries = reader.read_metadata().state_dict_metadata
    prefix = "state_dict."
    weights = {key.removeprefix(prefix): torch.empty(entry.size, dtype=entry.properties.dtype)
               for key, entry in entries.items() if key.startswith(prefix) and hasattr(entry, "size")}
    dcp.load({"state_dict": weights}, storage_reader=reader, no_dist=True)
    return weights


def write_checkpoint_file(folder: str | Path, path: str | Path) -> Path:
    """The folder as a one-file checkpoint at ``path`` (metadata and weights; no optimizer states), which Lightning's
    ``load_from_checkpoint`` reads."""
    torch.save({**folder_metadata(folder), "state_dict": folder_weights(folder)}, path)
    return Path(path)
