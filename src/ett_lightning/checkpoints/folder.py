"""Checkpoint folders, as ``FSDP2Strategy(save_distributed_checkpoint=True)`` writes them: torch.distributed.checkpoint
files of every rank's shards (``.metadata`` names what is where) beside Lightning's ``meta.pt`` (step, loops,
callbacks, hyperparameters). Read here in one process, without a process group, by what also reads one-file
checkpoints: the resume check, ``init_from`` and ``ett export``.

A folder is untrusted input like a file. torch reads ``.metadata`` with a plain ``pickle.load`` and the folder's
non-tensor entries (optimizer settings, step counters) with ``torch.load(weights_only=False)``: either can run
whatever the file names. Here ``.metadata`` is read by an unpickler that builds only torch.distributed.checkpoint's
metadata types (:class:`MetadataUnpickler`), and :func:`check_folder` reads every non-tensor entry with the
weights-only unpickler before Lightning resumes from the folder. Tensors are read weights-only by torch itself.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import Tensor
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, Metadata, StorageMeta

METADATA_GLOBALS = {
    *(("torch.distributed.checkpoint.metadata", name) for name in (
        "Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata",
        "ChunkStorageMetadata", "BytesStorageMetadata", "_MEM_FORMAT_ENCODING")),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),  # a layout's name -> torch.strided and the like
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
}


class MetadataUnpickler(pickle.Unpickler):
    """Builds a ``.metadata`` file's objects from torch.distributed.checkpoint's metadata types, dtypes and paths;
    anything else the file names is refused before it is imported."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in METADATA_GLOBALS or (
                module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name:.80} is not part of a checkpoint folder's metadata")


def folder_index(folder: str | Path) -> Metadata:
    """The folder's ``.metadata`` (what is stored where), read without running code; ValueError when refused."""
    path = Path(folder) / ".metadata"
    try:
        with path.open("rb") as file:
            metadata = MetadataUnpickler(file).load()
    except Exception as err:  # refused globals, truncation and foreign files fail in many types
        raise ValueError(f"{path} is not a readable checkpoint-folder index ({type(err).__name__}: "
                         f"{str(err)[:160]})") from None
    if not isinstance(metadata, Metadata):
        raise ValueError(f"{path} holds a {type(metadata).__name__}, not torch.distributed.checkpoint metadata")
    return metadata


def check_folder(folder: str | Path) -> Metadata:
    """The folder's index, once every entry it lists has been found to lie within a file of the folder, the tensors
    to fit in the bytes stored, and every stored piece of a non-tensor entry to read weights-only (Lightning reads
    those with ``weights_only=False`` when it resumes); ValueError (one line) naming what is refused."""
    folder = Path(folder)
    metadata = folder_index(folder)
    try:
        entries, places = dict(metadata.state_dict_metadata), dict(metadata.storage_data or {})
        tensor_bytes = 0
        for key, entry in entries.items():
            if not isinstance(entry, BytesStorageMetadata):
                if any(side < 0 for side in entry.size):
                    raise ValueError(f"{folder}: entry {key!r:.80} has a negative size {tuple(entry.size)}")
                tensor_bytes += entry.size.numel() * entry.properties.dtype.itemsize
        folder_bytes = sum(file.stat().st_size for file in folder.iterdir() if file.is_file())
        if tensor_bytes > folder_bytes:
            raise ValueError(f"{folder}: the index lists {tensor_bytes} bytes of tensors, the folder holds "
                             f"{folder_bytes}")
        data_keys = {key for key, entry in entries.items() if isinstance(entry, BytesStorageMetadata)}
        placed = set()
        for index, where in places.items():
            place = stored_place(folder, index.fqn, where)
            if index.fqn in data_keys:
                check_data_entry(folder, index.fqn, *place)
                placed.add(index.fqn)
    except (AttributeError, TypeError, KeyError) as err:
        raise ValueError(f"{folder}: its index is not a checkpoint folder's ({type(err).__name__}: "
                         f"{str(err)[:120]})") from None
    if data_keys - placed:
        raise ValueError(f"{folder}: entry {min(data_keys - placed)!r:.80} is listed without a place in the folder")
    return metadata


def stored_place(folder: Path, key: str, where: Any) -> tuple[Path, int, int]:
    """Where entry ``key`` is stored: a regular file of the folder, and a byte range inside it."""
    file = (folder / str(where.relative_path)).resolve()
    offset, length = int(where.offset), int(where.length)
    if (not file.is_relative_to(folder.resolve()) or not file.is_file() or getattr(where, "transform_descriptors", None)
            or offset < 0 or length < 0 or offset + length > file.stat().st_size):
        raise ValueError(f"{folder}: entry {key!r:.80} is not stored as plain bytes in a file of the folder")
    return file, offset, length


def check_data_entry(folder: Path, key: str, file: Path, offset: int, length: int) -> None:
    """The stored piece of non-tensor entry ``key`` unpickles weights-only (numbers, strings, containers)."""
    with file.open("rb") as data:
        data.seek(offset)
        raw = data.read(length)
    try:
        torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as err:  # the weights-only unpickler refuses in several types
        raise ValueError(f"{folder}: entry {key!r:.80} holds more than data ({refusal(err)})") from None


def refusal(err: Exception) -> str:
    """Why torch's weights-only unpickler refused, in one short line (its message spans a page)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    reason = next((line for line in lines if "GLOBAL" in line), lines[0] if lines else "")
    return f"{type(err).__name__}: {reason[:160]}"


class InertFileSystemReader(dcp.FileSystemReader):
    """torch's folder reader, whose ``.metadata`` is read by :class:`MetadataUnpickler`."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        metadata = folder_index(self.path)
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


def is_checkpoint_folder(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / ".metadata").is_file()


def folder_metadata(folder: str | Path) -> dict[str, Any]:
    """Everything but the tensors of weights and optimizer states (``meta.pt``, read weights-only)."""
    meta = Path(folder) / "meta.pt"
    if not meta.is_file():
        raise ValueError(f"{folder} is a checkpoint folder without meta.pt (incomplete, or not written by Lightning)")
    try:
        metadata = torch.load(meta, map_location="cpu", weights_only=True)
    except Exception as err:  # the weights-only unpickler refuses in several types
        raise ValueError(f"{meta} holds more than data or is no torch file ({refusal(err)})") from None
    if not isinstance(metadata, dict) or not isinstance(metadata.get("hyper_parameters", {}), dict):
        raise ValueError(f"{meta} is not Lightning's checkpoint metadata (a mapping with hyper_parameters)")
    return metadata


def folder_weights(folder: str | Path) -> dict[str, Tensor]:
    """The module's whole weights (the ``state_dict`` entries; optimizer states are not read), on CPU."""
    entries = check_folder(folder).state_dict_metadata
    reader = InertFileSystemReader(str(folder))
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
