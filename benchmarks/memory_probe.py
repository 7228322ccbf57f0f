"""A callback that measures what one training step of a rank holds and allocates, for benchmarks/memory_check.py
to compare with benchmarks/memory.py's estimate.

- States are counted from the live tensors (each storage once): the rank's parameters (its shards under FSDP2)
  and AdamW states when the step starts, its gradients just before the optimizer step.
- The step's peak is read from torch's profiler (``profile_memory=True``): every allocation and free of the CPU
  allocator during the step, summed in time order, gives the most bytes the step held above what was allocated
  when it began (activations, gathered units, gradients, temporaries).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import torch
from lightning.pytorch import Callback
from torch.distributed.tensor import DTensor
from torch.profiler import ProfilerActivity, profile


def storage_bytes(tensors) -> int:
    """Bytes of the storages behind ``tensors`` (a DTensor's local shard), each storage counted once."""
    storages = {}
    for tensor in tensors:
        local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
        storages[local.untyped_storage().data_ptr()] = local.untyped_storage().nbytes()
    return sum(storages.values())


class MemoryProbe(Callback):
    """Measures training step ``step`` of every rank and writes ``rank<r>.json`` into ``directory``.

    Args:
        directory: where each rank writes its figures.
        step: the step to measure (1 or later: the optimizer states exist when it begins).
    """

    def __init__(self, directory: str, step: int = 2) -> None:
        self.directory = Path(directory)
        self.step = step
        self.profiler: profile | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step != self.step:
            return
        optimizer_states = [t for state in trainer.optimizers[0].state.values() for t in state.values()
                            if isinstance(t, torch.Tensor) and t.dim() > 0]
        self.figures = {"weights": storage_bytes(pl_module.parameters()), "adam": storage_bytes(optimizer_states),
                        "tokens": int(batch.input_ids.numel()), "images": int(batch.images.shape[0]),
                        "world_size": trainer.world_size}
        self.profiler = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        self.profiler.__enter__()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self.profiler is not None:
            self.figures["gradients"] = storage_bytes(p.grad for p in pl_module.parameters() if p.grad is not None)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.profiler is None:
            return
        self.profiler.__exit__(None, None, None)
        events = self.profiler.profiler.kineto_results.events()
        self.profiler = None
        allocations = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
        self.figures["peak_step"] = max(itertools.accumulate(size for _, size in allocations), default=0)
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.figures, indent=1))
