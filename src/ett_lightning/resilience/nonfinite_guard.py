"""Non-finite guard: a NaN/inf step is skipped and counted instead of poisoning the weights."""

from __future__ import annotations

import logging

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor
from torch.distributed.tensor import DTensor
from torch.optim import Optimizer

from ett_lightning.training.clipping import loss_scaler
from ett_lightning.training.step_logging import writes_step_logs

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

    Under ``16-mixed`` a step whose loss is finite but whose scaled gradients overflow is the GradScaler's
    business: it skips the step and halves the loss scale, which is how it finds its scale (one skipped step per
    halving from its ``init_scale``, 2**16 by default). Those steps are counted apart, in
    ``train/overflow_steps``, and stop the run only at ``max_consecutive_overflows`` in a row (the scale then
    has fallen 2**30-fold by default: a float16 overflow in the backward that no scale fixes).

    Args:
        max_consecutive: bad steps in a row that stop the run.
        max_consecutive_overflows: ``16-mixed`` overflow steps in a row that stop the run.
    """

    def __init__(self, max_consecutive: int = 10, max_consecutive_overflows: int = 30) -> None:
        if max_consecutive < 1 or max_consecutive_overflows < 1:
            raise ValueError(f"max_consecutive and max_consecutive_overflows must be >= 1, got {max_consecutive} "
                             f"and {max_consecutive_overflows}")
        self.max_consecutive = max_consecutive
        self.max_consecutive_overflows = max_consecutive_overflows
        self.counts = torch.zeros(4, dtype=torch.long)  # bad: total, in a row; scaler overflows: total, in a row
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

    @property
    def overflows(self) -> int:
        """Steps the GradScaler skipped for a float16 overflow with a finite loss (reads the device counter)."""
        return int(self.counts[2])

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Optimizer) -> None:
        skip = self.record(trainer, pl_module, optimizer)
        skips_on_device = getattr(optimizer, "_step_supports_amp_scaling", False)
        if skips_on_device:
            optimizer.found_inf = skip.float()
        elif skip.item():
            optimizer.zero_grad(set_to_none=True)
        writes_logs = writes_step_logs(pl_module)
        if writes_logs or not skips_on_device:
            self.check(trainer)
        if writes_logs:
            pl_module.log("train/nonfinite_steps", self.counts[0].float(), on_step=True, batch_size=1)
            if loss_scaler(trainer) is not None:
                pl_module.log("train/overflow_steps", self.counts[2].float(), on_step=True, batch_size=1)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.check(trainer)

    def record(self, trainer: Trainer, pl_module: LightningModule, optimizer: Optimizer) -> Tensor:
        """Updates the device counters and the bad-part flags with this step's verdict; returns it (a bool tensor:
        skip the step). Under a GradScaler, non-finite gradients of a finite loss on every rank are an overflow it
        handles; without loss parts to tell, every non-finite step counts as bad."""
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads:
            return torch.zeros((), dtype=torch.bool, device=self.counts.device)
        shards = [g.to_local() if isinstance(g, DTensor) else g for g in grads]
        nonfinite = ~torch.isfinite(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(shards))))
        if any(isinstance(g, DTensor) for g in grads):  # sharded (FSDP2): each rank checked its own shard
            nonfinite = self.any_rank(trainer, nonfinite)
        parts = getattr(pl_module, "train_parts", {})
        flags = ~torch.isfinite(torch.stack([v.float() for v in parts.values()])) if parts else nonfinite.new_zeros(0)
        overflow = torch.zeros_like(nonfinite)
        if loss_scaler(trainer) is not None and parts:
            overflow = nonfinite & ~self.any_rank(trainer, flags.any())
        bad = nonfinite & ~overflow
        self.counts = self.counts.to(bad.device)
        self.counts[0] += bad
        self.counts[1] = (self.counts[1] + bad) * bad
        self.counts[2] += overflow
        self.counts[3] = (self.counts[3] + overflow) * overflow
        if tuple(parts) != self.part_names:
            self.part_names, self.bad_part_flags = tuple(parts), flags.new_zeros(flags.shape)
        self.bad_part_flags = torch.where(bad, flags, self.bad_part_flags.to(flags.device))
        return nonfinite

    @staticmethod
    def any_rank(trainer: Trainer, flag: Tensor) -> Tensor:
        """``flag`` or-ed over the ranks (one small all-reduce, on the device): the gradients are all-reduced, the
        losses are not, and every rank must reach the same verdict or one stops while the others wait for it."""
        if trainer.world_size == 1:
            return flag
        return trainer.strategy.reduce(flag.float(), reduce_op="sum") > 0

    def check(self, trainer: Trainer) -> None:
        """Warns about the bad steps since the previous check and stops the run after too many in a row (of
        either kind)."""
        total, consecutive, overflows, overflows_in_a_row = self.counts.tolist()
        if overflows_in_a_row >= self.max_consecutive_overflows:
            scaler = loss_scaler(trainer)
            raise RuntimeError(
                f"{overflows_in_a_row} consecutive steps whose float16 gradients overflowed with a finite loss (up to "
                f"step {trainer.global_step}); the GradScaler lowered the loss scale to "
                f"{scaler.get_scale() if scaler else 'unknown'} and they still overflow. Some backward operation "
                "exceeds float16's range at any scale: use precision bf16-mixed or 32-true."
            )
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
        total, consecutive, overflows, overflows_in_a_row = self.counts.tolist()
        return {"total": total, "consecutive": consecutive, "overflows": overflows,
                "overflows_in_a_row": overflows_in_a_row}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Also reads checkpoints written before overflows were counted apart (no overflow counters: zero)."""
        keys = ("total", "consecutive", "overflows", "overflows_in_a_row")
        self.counts = torch.tensor([state_dict.get(key, 0) for key in keys])
        self.reported = state_dict["total"]
