"""Small helpers shared across the package."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """Reads tensors from ``.safetensors`` or a torch pickle (``.pt``/``.pth``/``.bin``/``.ckpt``), on CPU.

    Lightning checkpoints and taming-style dicts nest the weights under ``state_dict`` (or ``model``); those are
    unwrapped. Pickles are loaded with ``weights_only=True`` so a checkpoint cannot run code.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        return load_file(str(path), device="cpu")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(payload, dict) and isinstance(payload.get(key), dict):
            return payload[key]
    return payload
