"""AdamW with one learning rate per component, no decay on biases and norms, and a warmup + cosine schedule."""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from ett_lightning.losses import ETTLoss

DISCRIMINATOR = "discriminator"
FUSED_ADAMW_DEVICES = ("cuda", "cpu")


def parameter_groups(name: str, module: nn.Module, lr: float, weight_decay: float) -> list[dict]:
    """Two AdamW groups for ``module``: matrices/convs with weight decay, biases/norm/scalars without."""
    params = [p for p in module.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    return [
        {"name": name, "params": decay, "lr": lr, "weight_decay": weight_decay},
        {"name": f"{name}/no_decay", "params": no_decay, "lr": lr, "weight_decay": 0.0},
    ]


def discriminator_groups(loss: ETTLoss) -> list[dict]:
    """The discriminator's AdamW group (its own learning rate and betas, no weight decay), if there is one."""
    adversarial = loss.adversarial
    if adversarial is None:
        return []
    params = [p for p in adversarial.parameters() if p.requires_grad]
    return [{"name": DISCRIMINATOR, "params": params, "lr": adversarial.learning_rate, "betas": adversarial.betas,
             "weight_decay": 0.0}]


def adamw_with_schedule(
    groups: list[dict], betas: tuple[float, float], warmup: int, total: int, floor: float, device: torch.device
) -> dict:
    """AdamW with a per-step warmup + cosine schedule, in Lightning's optimizer-config form.

    Fused on CUDA and CPU: one kernel per step, and it accepts GradScaler's ``found_inf`` flag, which lets
    :class:`NonFiniteGuard` skip a bad step without reading anything back to the host.
    """
    fused = True if device.type in FUSED_ADAMW_DEVICES else None
    optimizer = torch.optim.AdamW(groups, betas=tuple(betas), fused=fused)
    schedule = partial(warmup_cosine, warmup=warmup, total=total, floor=floor)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": LambdaLR(optimizer, schedule), "interval": "step"}}


def warmup_cosine(step: int, warmup: int, total: int, floor: float) -> float:
    """Learning-rate multiplier: linear warmup to 1, then cosine decay to ``floor`` at ``total`` steps."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
