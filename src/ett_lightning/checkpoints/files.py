"""Weights files of any origin read as tensors, and nothing else: no code named by the file runs."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

from ett_lightning.checkpoints.folder import folder_weights, is_checkpoint_folder
from ett_lightning.checkpoints.unpickler import Unloaded, load_inert

log = logging.getLogger(__name__)


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """Reads tensors from ``.safetensors`` or a torch pickle (``.pt``/``.pth``/``.bin``/``.ckpt``), on CPU.

    Lightning checkpoints and taming-style dicts nest the weights under ``state_dict`` (or ``model``); those are
    unwrapped; a checkpoint folder (FSDP2's ``save_distributed_checkpoint``) gives its module weights. A pickle is
    first read with ``torch.load(weights_only=True)``; one that also carries other objects
    (training arguments, callback states, config objects) is read again by :func:`load_inert`, which builds its
    tensors and turns every other object into an inert stand-in. Either way no code named by the file runs.
    """
    path = Path(path)
    if is_checkpoint_folder(path):
        return folder_weights(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        return load_file(str(path), device="cpu")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch's weights-only unpickler refuses (or trips on) anything else in many ways
        payload = load_pickle_tensors(path)
    for key in ("state_dict", "model"):
        if isinstance(payload, dict) and isinstance(payload.get(key), dict):
            payload = payload[key]
            break
    return tensors_only(payload, path)


def load_pickle_tensors(path: Path) -> object:
    """:func:`load_inert`, with the reason in the error when the file is no torch pickle at all."""
    try:
        payload = load_inert(path)
    except Exception as err:  # a torn or foreign file fails in many ways inside the unpickler
        raise ValueError(f"{path} is not a readable torch checkpoint ({type(err).__name__}: {err})") from err
    log.info("%s carries objects besides tensors; loaded its tensors and skipped the rest", path)
    return payload


def tensors_only(payload: object, path: Path) -> dict[str, Tensor]:
    """The tensor entries of a state dict; an error naming what the file holds when it is no state dict."""
    if isinstance(payload, Unloaded):
        raise ValueError(f"{path} holds a pickled {payload.origin} object, not a state dict: save its "
                         "state_dict() (or the weights as .safetensors) and load that")
    if not isinstance(payload, dict):
        raise ValueError(f"{path} holds a {type(payload).__name__}, not a state dict of tensors")
    tensors = {key: value for key, value in payload.items() if isinstance(value, Tensor)}
    for key, tensor in tensors.items():
        if tensor.untyped_storage().nbytes() < tensor.numel() * tensor.element_size():
            raise ValueError(f"{path}: {str(key)[:100]} declares shape {tuple(tensor.shape)} over "
                             f"{tensor.untyped_storage().nbytes()} bytes of storage (a broadcast view, not weights): "
                             "a model built to its shape would be that large; refusing the file")
    return tensors
