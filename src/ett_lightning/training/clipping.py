"""Gradient clipping that keeps the generator's and the discriminator's gradients apart."""

from __future__ import annotations

import lightning as L
import torch

from ett_lightning.training.optimizer import DISCRIMINATOR


def clip_by_player(module: L.LightningModule, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None,
                   gradient_clip_algorithm: str | None) -> None:
    """The trainer's gradient clipping, by norm separately for the discriminator and for everything else, so
    the discriminator's gradients never shrink the tokenizer's step (nor the reverse).

    It clips here rather than through Lightning's precision plugin, which refuses to clip under ``bf16-mixed``
    or ``16-mixed`` when the optimizer is fused (the AdamW :func:`adamw_with_schedule` builds): with a gradient
    scaler (``16-mixed``) the gradients are unscaled first, which a fused step then accounts for. Under FSDP2 each
    rank holds a shard of every gradient (a DTensor), and ``clip_grad_norm_`` reduces the norm over the shards.
    """
    if not gradient_clip_val:
        return
    unscale_for_clipping(module.trainer, optimizer)
    groups = optimizer.param_groups
    for is_discriminator in (False, True):
        params = [p for g in groups if (g.get("name") == DISCRIMINATOR) == is_discriminator for p in g["params"]]
        if not params:
            continue
        if gradient_clip_algorithm == "value":
            torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
        else:
            torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)


def unscale_for_clipping(trainer: L.Trainer, optimizer: torch.optim.Optimizer) -> None:
    """Divides the gradients by the loss scale of ``16-mixed`` where Lightning has not (it unscales before the
    clipping hook only for optimizers that do not unscale inside their own step, i.e. not for fused ones)."""
    scaler = loss_scaler(trainer)
    if scaler is not None and getattr(optimizer, "_step_supports_amp_scaling", False):
        scaler.unscale_(optimizer)


def loss_scaler(trainer: L.Trainer) -> torch.amp.GradScaler | None:
    """The precision plugin's GradScaler when it scales the loss (``16-mixed``), else None."""
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    return scaler if scaler is not None and scaler.is_enabled() else None
