"""Small helpers shared across the package."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn


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


def load_strict(module: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with a readable report of missing / unexpected / mis-shaped keys."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        lines = [f"weights from {source} do not match {type(module).__name__}:"]
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
            if keys:
                lines.append(f"  {title} ({len(keys)}): " + ", ".join(keys[:10]) + (" ..." if len(keys) > 10 else ""))
        raise ValueError("\n".join(lines))
    module.load_state_dict(state, strict=True)
