"""Stops end-to-end tuning from wrecking the tokenizer: roll back to the last healthy state, then a remedy or a stop."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch.distributed.fsdp import FSDPModule

from ett_lightning.health.dead_codes import restart_dead_codes
from ett_lightning.health.tokenizer_health import PREFIX, TokenizerHealth, publish
from ett_lightning.user_errors import UserError

Remedy = Literal["lower_lr", "raise_alpha", "stop"]


class TokenizerCollapse(UserError):
    """The guard stopped the run: the message names the metric, its value, its bound and the step."""


class TokenizerGuard(TokenizerHealth):
    """:class:`TokenizerHealth` with bounds relative to the starting tokenizer. When a bound is broken at
    ``patience`` checks in a row, the guard *trips*: it restores the trainable weights and optimizer state of the
    last check that kept every bound, then applies ``remedy``; after ``max_trips`` trips, or with ``remedy: stop``,
    it ends the run with a message naming the metric, its value, its bound and the step. A breach seen on any rank
    counts on every rank (one all-reduce), so all ranks take the same decision. The trips and the remedy's settings
    are saved in checkpoints: a resumed run goes on with them.

    Args:
        patience: checks in a row out of bounds before the guard trips.
        min_usage_ratio: the probe codes' codebook usage below this fraction of the start's is out of bounds.
        min_perplexity_ratio: the probe codes' perplexity below this fraction of the start's is out of bounds.
        max_dead_share: the code window's dead-code share above this is out of bounds (null: no bound).
        max_psnr_drop_db: the probes' PSNR more than this many dB below the start's is out of bounds (null: none).
        max_index_flips: the share of probe token positions whose code changed above this is out of bounds. Off by
            default (null): changing codes is what ETT is for.
        remedy: after the rollback, ``lower_lr`` multiplies the tokenizer's learning rates by ``lr_factor``,
            ``raise_alpha`` the loss's alpha (the weight of the tokenizer's own objective) by ``alpha_factor``;
            ``stop`` ends the run.
        lr_factor: the ``lower_lr`` factor.
        alpha_factor: the ``raise_alpha`` factor.
        max_trips: trips with a remedy before the run stops.
        rollback: keep a copy of the trainable weights and optimizer state of the last healthy check (host memory:
            about three times the trainable parameters' size) and restore it on a trip; off, the remedy starts from
            the current state.
        restart_dead_codes: at each check that keeps every bound, codes used fewer than ``dead_below`` times in the
            window take the value of a recent encoder output (logged as ``health/restarted_codes``).
    """

    def __init__(self, *, patience: int = 2, min_usage_ratio: float | None = 0.5,
                 min_perplexity_ratio: float | None = 0.5, max_dead_share: float | None = 0.9,
                 max_psnr_drop_db: float | None = 3.0, max_index_flips: float | None = None,
                 remedy: Remedy = "lower_lr", lr_factor: float = 0.1, alpha_factor: float = 4.0,
                 max_trips: int = 3, rollback: bool = True, restart_dead_codes: bool = False,
                 **health: Any) -> None:
        super().__init__(**health)
        self.keep_latents = self.restarting = restart_dead_codes
        if remedy not in ("lower_lr", "raise_alpha", "stop"):
            raise UserError(f"TokenizerGuard: remedy must be lower_lr, raise_alpha or stop, got {remedy!r}")
        if patience < 1 or max_trips < 0:
            raise UserError("TokenizerGuard: patience must be >= 1 and max_trips >= 0")
        if not (0 < lr_factor < 1 and 1 < alpha_factor < math.inf):
            raise UserError(f"TokenizerGuard: lr_factor must lie between 0 and 1 (got {lr_factor}) and alpha_factor "
                            f"be a finite number above 1 (got {alpha_factor}): the remedies lower the rate and raise "
                            "alpha")
        bounds = {"min_usage_ratio": min_usage_ratio, "min_perplexity_ratio": min_perplexity_ratio,
                  "max_dead_share": max_dead_share, "max_psnr_drop_db": max_psnr_drop_db,
                  "max_index_flips": max_index_flips}
        odd = [name for name, bound in bounds.items() if bound is not None and not math.isfinite(bound)]
        if odd:
            raise UserError(f"TokenizerGuard: {', '.join(odd)} must be finite numbers, or null for no bound")
        self.bounds = [("probe_usage_ratio", "<", min_usage_ratio), ("probe_perplexity_ratio", "<",
                       min_perplexity_ratio), ("window_dead_share", ">", max_dead_share),
                       ("probe_psnr_drop", ">", max_psnr_drop_db), ("probe_index_flips", ">", max_index_flips)]
        self.patience = patience
        self.remedy = remedy
        self.lr_factor = lr_factor
        self.alpha_factor = alpha_factor
        self.max_trips = max_trips
        self.rollback = rollback
        self.trips = 0
        self.alpha: float | None = None
        self.breaches = 0
        self.healthy: dict[str, Any] | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if self.active and self.restarting and not pl_module.tokenizer.quantize.learned_codebook:
            raise UserError(f"TokenizerGuard: restart_dead_codes needs a learned codebook; the "
                            f"{type(pl_module.tokenizer.quantize).__name__} computes its codes from the index (set "
                            "restart_dead_codes: false)")
        trips, breaches, alpha = (self.saved.get(key) for key in ("trips", "breaches", "alpha"))
        if not all(isinstance(n, int) and 0 <= n <= 10**6 for n in (trips or 0, breaches or 0)) or not (
                alpha is None or (isinstance(alpha, float) and math.isfinite(alpha) and alpha >= 0)):
            raise UserError("the checkpoint's tokenizer-guard state is malformed: trips and breaches must be whole "
                            "numbers >= 0, alpha a finite number >= 0")
        self.trips, self.breaches, self.alpha = trips or 0, breaches or 0, alpha
        if self.alpha is not None:
            pl_module.loss.alpha = self.alpha

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        if self.active and self.rollback and self.healthy is None and not self.breaches:
            self.healthy = snapshot(trainer, pl_module)  # the start, or a resumed run's last check if it was healthy

    def out_of_bounds(self) -> list[str]:
        """This rank's broken bounds, as text."""
        return [f"{PREFIX}{name} = {self.values[name]:.4g} {relation} {bound:g}" for name, relation, bound
                in self.bounds if bound is not None and name in self.values
                and (self.values[name] < bound if relation == "<" else self.values[name] > bound)]

    def after_check(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        broken = self.out_of_bounds()
        anywhere = trainer.strategy.reduce(torch.tensor(float(bool(broken)), device=pl_module.device),
                                           reduce_op="max")
        if not anywhere.item():
            self.breaches = 0
            if self.restarting and self.latents is not None:
                restarted = restart_dead_codes(pl_module.tokenizer.quantize, self.counts, self.latents,
                                               self.dead_below, trainer.strategy, trainer.global_step)
                publish(trainer, {"restarted_codes": float(restarted)})
            if self.rollback:
                self.healthy = snapshot(trainer, pl_module, into=self.healthy)
            return
        self.breaches += 1
        if self.breaches < self.patience:
            return
        self.breaches = 0
        reason = "; ".join(broken) or "a bound broken on another rank"
        restored = ""
        if self.rollback and self.healthy is not None:
            restore(trainer, pl_module, self.healthy)
            restored = f"; restored the state of step {self.healthy['step']}"
        self.trips += 1
        publish(trainer, {"guard_trips": float(self.trips)})
        where = f"tokenizer guard at step {trainer.global_step}: {reason} for {self.patience} checks{restored}"
        if self.remedy == "stop" or self.trips > self.max_trips:
            kept = ""
            if self.rollback and self.healthy is not None:
                path = Path(trainer.default_root_dir) / "checkpoints" / f"healthy-step{self.healthy['step']}.ckpt"
                trainer.save_checkpoint(path)
                kept = f"; those weights are in {path}: start again from them with model.init_args.init_from"
            raise TokenizerCollapse(f"{where}; stopped ({self.trips} trips){kept}, a lower learning rate for the "
                                    "tokenizer or a higher loss alpha (docs/tokenizer_health.md)")
        self.apply_remedy(trainer, pl_module)
        print(f"{where}; {self.remedy} (trip {self.trips} of at most {self.max_trips})", flush=True)

    def apply_remedy(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.remedy == "raise_alpha":
            self.alpha = pl_module.loss.alpha * self.alpha_factor
            pl_module.loss.alpha = self.alpha
            return
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                if is_tokenizer_group(group):
                    group["lr"] *= self.lr_factor
                    if "initial_lr" in group:
                        group["initial_lr"] *= self.lr_factor
        for config in trainer.lr_scheduler_configs:  # the schedule multiplies its base rates: lower those too
            scheduler = config.scheduler
            scheduler.base_lrs = [lr * self.lr_factor if is_tokenizer_group(group) else lr
                                  for lr, group in zip(scheduler.base_lrs, scheduler.optimizer.param_groups,
                                                       strict=True)]

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "trips": self.trips, "breaches": self.breaches, "alpha": self.alpha}


def is_tokenizer_group(group: dict[str, Any]) -> bool:
    """An AdamW group of the tokenizer's (``tokenizer``, ``tokenizer/no_decay``, ``tokenizer/codebook``)."""
    return group.get("name", "").split("/")[0] == "tokenizer"


def local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def reshard(pl_module: L.LightningModule) -> None:
    """FSDP2 keeps the root's parameters gathered after a forward: shard them again, so that the snapshot and the
    restore both see each rank's own shard."""
    for module in pl_module.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def snapshot(trainer: L.Trainer, pl_module: L.LightningModule, into: dict[str, Any] | None = None) -> dict[str, Any]:
    """Host copies of the trainable parameters and of their optimizer states (this rank's shards), written into the
    tensors of an earlier snapshot ``into`` where they match (no second copy in memory while the new one is made)."""
    reshard(pl_module)
    params = [p for p in pl_module.parameters() if p.requires_grad]
    states = [[optimizer.state[p] for group in optimizer.param_groups for p in group["params"]]
              for optimizer in trainer.optimizers]
    old = into or {"parameters": [None] * len(params), "optimizers": [[{}] * len(s) for s in states]}

    def copy(value: Any, earlier: Any) -> Any:
        if not isinstance(value, torch.Tensor):
            return value
        value = local(value).detach()
        if isinstance(earlier, torch.Tensor) and earlier.shape == value.shape and earlier.dtype == value.dtype:
            return earlier.copy_(value)
        return value.to("cpu", copy=True)

    return {"step": trainer.global_step,
            "parameters": [copy(p, earlier) for p, earlier in zip(params, old["parameters"], strict=True)],
            "optimizers": [[{key: copy(value, earlier.get(key)) for key, value in state.items()}
                            for state, earlier in zip(optimizer_states, earlier_states, strict=True)]
                           for optimizer_states, earlier_states in zip(states, old["optimizers"], strict=True)]}


def restore(trainer: L.Trainer, pl_module: L.LightningModule, state: dict[str, Any]) -> None:
    """Copies a :func:`snapshot` back into the parameters and optimizer states, in place: the tensors (FSDP2's
    DTensors among them) stay those the optimizer steps; a state that did not exist yet is dropped again. The
    learning rates stay the schedule's."""
    reshard(pl_module)
    with torch.no_grad():
        for p, saved in zip([p for p in pl_module.parameters() if p.requires_grad], state["parameters"], strict=True):
            local(p).copy_(saved)
        for optimizer, states in zip(trainer.optimizers, state["optimizers"], strict=True):
            params = [p for group in optimizer.param_groups for p in group["params"]]
            for p, saved in zip(params, states, strict=True):
                current = optimizer.state[p]
                if not saved:
                    optimizer.state.pop(p, None)
                    continue
                for key, value in saved.items():
                    if isinstance(current.get(key), torch.Tensor):
                        local(current[key]).copy_(value)
                    else:
                        current[key] = value
