"""Non-finite guard: a NaN/inf step is skipped and counted instead of poisoning the weights."""

from __future__ import annotations

import logging
import math

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.optim import Optimizer

from ett_lightning.module import writes_step_logs

log = logging.getLogger(__name__)


class NonFiniteGuard(Callback):
    """Before each optimizer step, checks that every gradient is finite (one fused norm, one host sync).

    A bad step has its gradients dropped (the optimizer leaves weights and moments alone), is counted in
    ``train/nonfinite_steps`` and warned about with the loss parts that were not finite. After
    ``max_consecutive`` bad steps in a row the run stops with an error naming those parts. Loss parts come from
    the module's ``train_parts`` (set by ``log_split``); other modules get the message without them.
    """

    def __init__(self, max_consecutive: int = 10) -> None:
        if max_consecutive < 1:
            raise ValueError(f"max_consecutive must be >= 1, got {max_consecutive}")
        self.max_consecutive = max_consecutive
        self.consecutive = 0
        self.total = 0

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Optimizer) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))) if grads else torch.zeros(())
        if math.isfinite(norm.item()):
            self.consecutive = 0
        else:
            self.skip(trainer, pl_module, optimizer)
        if writes_step_logs(pl_module):
            pl_module.log("train/nonfinite_steps", float(self.total), on_step=True, batch_size=1)

    def skip(self, trainer: Trainer, pl_module: LightningModule, optimizer: Optimizer) -> None:
        optimizer.zero_grad(set_to_none=True)
        self.consecutive += 1
        self.total += 1
        parts = bad_parts(pl_module)
        log.warning("step %d: non-finite gradients (loss parts not finite: %s); step skipped [%d in a row, %d total]",
                    trainer.global_step, parts, self.consecutive, self.total)
        if self.consecutive >= self.max_consecutive:
            raise RuntimeError(
                f"{self.consecutive} consecutive steps with non-finite gradients (last at step {trainer.global_step}); "
                f"loss parts not finite: {parts}. Lower the learning rate of the component that feeds them, check "
                "the data, or use precision 32-true to find the first bad operation."
            )

    def state_dict(self) -> dict[str, int]:
        return {"total": self.total, "consecutive": self.consecutive}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.total, self.consecutive = state_dict["total"], state_dict["consecutive"]


def bad_parts(pl_module: LightningModule) -> str:
    parts = getattr(pl_module, "train_parts", {})
    bad = [name for name, value in parts.items() if not torch.isfinite(value).all()]
    return ", ".join(bad) if bad else "none (gradients only)"
