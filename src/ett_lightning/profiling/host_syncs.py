"""Finds the operations that make the host wait for the accelerator: each one stalls a GPU training step."""

from __future__ import annotations

import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode

SYNCING_OPS = frozenset({
    "_local_scalar_dense",  # .item(), float(t), int(t), bool(t), `if t:`
    "is_nonzero",
    "equal",
    "nonzero",  # output size depends on the values
    "masked_select",
    "unique_dim",
    "_unique2",
    "unique_consecutive",
    "bincount",  # CUDA sizes its output from the largest value
    "repeat_interleave",
})
HOST_COPY_METHODS = ("tolist", "numpy")


@dataclass(frozen=True)
class HostSync:
    op: str
    where: str


class HostSyncRecorder(TorchDispatchMode):
    """Records every operation that would read device memory on the host, with the caller that issued it.

    It works on any device, CPU included, because it looks at which operations run, not at timings: on a GPU
    each of them blocks the Python thread until the queued kernels finish. Boolean-mask indexing (``x[mask]``)
    counts too, since it needs the number of selected elements, and so do ``Tensor.tolist`` and
    ``Tensor.numpy``, which read data without dispatching an operation (patched while the recorder is active).
    """

    def __init__(self) -> None:
        super().__init__()
        self.syncs: Counter[HostSync] = Counter()
        self.unpatched: dict[str, Callable] = {}

    def __enter__(self) -> HostSyncRecorder:
        for name in HOST_COPY_METHODS:
            self.unpatched[name] = original = getattr(torch.Tensor, name)
            setattr(torch.Tensor, name, self.recording(name, original))
        return super().__enter__()

    def __exit__(self, *exc_info) -> None:
        super().__exit__(*exc_info)
        for name, original in self.unpatched.items():
            setattr(torch.Tensor, name, original)
        self.unpatched.clear()

    def recording(self, name: str, method: Callable) -> Callable:
        """``method`` wrapped to count a sync: tolist/numpy read the data without dispatching an operation."""

        def wrapper(tensor: torch.Tensor, *args, **kwargs):
            self.syncs[HostSync(name, caller())] += 1
            return method(tensor, *args, **kwargs)

        return wrapper

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name.split("::")[-1]
        if name in SYNCING_OPS or (name == "index" and masks_in(args)):
            self.syncs[HostSync(name, caller())] += 1
        return func(*args, **(kwargs or {}))

    def report(self) -> str:
        return "\n".join(f"{count:4d} x {sync.op:20s} {sync.where}" for sync, count in self.syncs.most_common())


def masks_in(args: tuple) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or ())


def caller() -> str:
    """The innermost frame outside torch and this recorder: the line that asked for the value."""
    for frame in reversed(traceback.extract_stack()):
        if "/torch/" not in frame.filename and frame.filename != __file__:
            return f"{frame.filename}:{frame.lineno} ({frame.name})"
    return "?"
