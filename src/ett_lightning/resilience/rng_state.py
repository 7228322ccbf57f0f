"""Random-number-generator state in checkpoints, so a resumed run draws what the uninterrupted run would."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback


class RNGState(Callback):
    """Saves Python, NumPy, torch CPU and CUDA generator states with each checkpoint and restores them on resume.

    Lightning restores weights, optimizer, scheduler and loop counters but not these; without them dropout masks,
    random crops and worker seeds after a resume differ from the run that was interrupted.
    """

    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain tuples only, so checkpoints stay loadable with ``torch.load(weights_only=True)``."""
        name, keys, position, has_gauss, gauss = np.random.get_state()
        numpy_state = (name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss)
        state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        random.setstate(state_dict["python"])
        name, keys, position, has_gauss, gauss = state_dict["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
        torch.set_rng_state(state_dict["torch"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])
