"""Non-finite guard: a NaN/inf step is skipped and counted instead of poisoning the weights."""

from __future__ import annotations

import logging

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor
from torch.optim import Optimizer

from ett_lightning.module import writes_step_logs

log = logging.getLogger(__name__)


class NonFiniteGuard(Callback):
    """Before each optimizer step, checks on the device that every gradient is finite (one fused norm).

    A bad step leaves weights and optimizer moments untouched. With an optimizer that accepts GradScaler's
    ``found_inf`` flag (fused Adam/AdamW, which :class:`ETTModule` builds) the flag makes the optimizer skip the
    update on the device, and the counts are read on the host only when the loggers write (every
    ``log_every_n_steps``) and when training ends: the step itself never waits for the GPU. Other optimizers
    are checked on the host every step, and a bad step's gradients are dropped.

    Bad steps are counted in ``train/nonfinite_steps`` and warned about with the loss parts (the module's
    ``train_parts``, set by ``log_split``) that were not finite at the latest one. When a check finds
    ``max_consecutive`` or more bad steps in a row, the run stops with an error naming those parts.
    """

    def __init__(self, max_consecutive: int = 10) -> None:
        if max_consecutive < 1:
            raise ValueError(f"max_consecutive must be >= 1, got {max_consecutive}")
        self.max_consecutive = max_consecutive
        self.counts = torch.zeros(2, dtype=torch.long)
        self.part_names: tuple[str, ...] = ()
        self.bad_part_flags = torch.zeros(0, dtype=torch.bool)
        self.reported = 0

    @property
    def total(self) -> int:
        """Bad steps since the start of training (reads the device counter)."""
        return int(self.counts[0])

    @property
    def consecutive(self) -> int:
        """Bad steps in a row up to the latest step (reads the device counter)."""
        return int(self.counts[1])

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Optimizer) -> None:
        bad = self.record(pl_module, optimizer)
        skips_on_device = getattr(optimizer, "_step_supports_amp_scaling", False)
        if skips_on_device:
            optimizer.found_inf = bad.float()
        elif bad.item():
            optimizer.zero_grad(set_to_none=True)
        writes_logs = writes_step_logs(pl_module)
        if writes_logs or not skips_on_device:
            self.check(trainer)
        if writes_logs:
            pl_module.log("train/nonfinite_steps", self.counts[0].float(), on_step=True, batch_size=1)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.check(trainer)

    def record(self, pl_module: LightningModule, optimizer: Optimizer) -> Tensor:
        """Updates the device counters and the bad-part flags with this step's verdict; returns it (a bool tensor)."""
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads:
            return torch.zeros((), dtype=torch.bool, device=self.counts.device)
        bad = ~torch.isfinite(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))))
        self.counts = self.counts.to(bad.device)
        self.counts[0] += bad
        self.counts[1] = (self.counts[1] + bad) * bad
        parts = getattr(pl_module, "train_parts", {})
        flags = ~torch.isfinite(torch.stack([v.float() for v in parts.values()])) if parts else bad.new_zeros(0)
        if tuple(parts) != self.part_names:
            self.part_names, self.bad_part_flags = tuple(parts), flags.new_zeros(flags.shape)
        self.bad_part_flags = torch.where(bad, flags, self.bad_part_flags.to(flags.device))
        return bad

    def check(self, trainer: Trainer) -> None:
        """Warns about the bad steps since the previous check and stops the run after too many in a row."""
        total, consecutive = self.counts.tolist()
        if total == self.reported:
            return
        parts = self.bad_parts()
        log.warning("step %d: %d step(s) with non-finite gradients since the previous check were skipped (loss parts "
                    "not finite: %s) [%d in a row, %d total]", trainer.global_step, total - self.reported, parts,
                    consecutive, total)
        self.reported = total
        if consecutive >= self.max_consecutive:
            raise RuntimeError(
                f"{consecutive} consecutive steps with non-finite gradients (up to step {trainer.global_step}); "
                f"loss parts not finite: {parts}. Lower the learning rate of the component that feeds them, check "
                "the data, or use precision 32-true to find the first bad operation."
            )

    def bad_parts(self) -> str:
        bad = [name for name, flag in zip(self.part_names, self.bad_part_flags.tolist()) if flag]
        return ", ".join(bad) if bad else "none (gradients only)"

    def state_dict(self) -> dict[str, int]:
        return {"total": self.total, "consecutive": self.consecutive}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.counts = torch.tensor([state_dict["total"], state_dict["consecutive"]])
        self.reported = state_dict["total"]
