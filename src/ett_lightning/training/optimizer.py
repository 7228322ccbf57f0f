"""AdamW with one learning rate per component, no decay on biases, norms, codebooks and positions, and a warmup +
cosine schedule."""

from __future__ import annotations

import logging
import math
from functools import partial

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from ett_lightning.losses import ETTLoss
from ett_lightning.tokenizer.quantizers import Quantizer
from ett_lightning.user_errors import UserError

log = logging.getLogger(__name__)

DISCRIMINATOR = "discriminator"
FUSED_ADAMW_DEVICES = ("cuda", "cpu")


def parameter_groups(name: str, module: nn.Module, lr: float, weight_decay: float) -> list[dict]:
    """Two AdamW groups for ``module``'s trainable parameters: weight matrices and convolutions with weight decay,
    the rest (:func:`undecayed_names`) without. The split is logged at debug level, by parameter name."""
    parameters = {n: p for n, p in module.named_parameters() if p.requires_grad}
    undecayed = undecayed_names(module)
    decayed, kept = [n for n in parameters if n not in undecayed], [n for n in parameters if n in undecayed]
    log.debug("%s: weight decay %s on %s; none on %s", name, weight_decay, decayed, kept)
    return [
        {"name": name, "params": [parameters[n] for n in decayed], "lr": lr, "weight_decay": weight_decay},
        {"name": f"{name}/no_decay", "params": [parameters[n] for n in kept], "lr": lr, "weight_decay": 0.0},
    ]


def module_groups(module) -> list[dict]:
    """An ``ETTModule``'s AdamW groups: one learning rate per trainable component (decay as
    :func:`parameter_groups`), the codebook's own with ``learning_rates.codebook``, and the discriminator's while the
    tokenizer trains."""
    groups = []
    for name in module.components():
        if module.is_trainable(name):
            parts = parameter_groups(name, getattr(module, name), module.learning_rates[name], module.weight_decay)
            if name == "tokenizer" and "codebook" in module.learning_rates:
                if not module.tokenizer.quantize.learned_codebook:
                    raise UserError(f"learning_rates.codebook: the {type(module.tokenizer.quantize).__name__} "
                                    "computes its codes from the index and has no codebook to train; remove it")
                parts = with_codebook_group(parts, module.tokenizer.quantize, module.learning_rates["codebook"])
            groups += parts
    if not groups:
        raise ValueError(f"stage {module.stage!r} with trainable={sorted(module.trainable)} leaves nothing to train")
    if module.is_trainable("tokenizer"):
        groups += discriminator_groups(module.loss)
    return groups


def check_rate_names(rates: dict[str, float], known: set[str]) -> None:
    """Refuses learning rates for parts a model does not have (a misspelt name would be ignored silently)."""
    if set(rates) - known:
        raise ValueError(f"learning_rates names {sorted(set(rates) - known)}: give rates for {sorted(known)}")


def with_codebook_group(groups: list[dict], quantizer: nn.Module, lr: float) -> list[dict]:
    """``groups`` with the quantizer's trainable parameters moved into their own ``tokenizer/codebook`` group at
    learning rate ``lr`` (no weight decay, as before): a codebook that end-to-end tuning should move more slowly, or
    faster, than the encoder."""
    codebook = [p for p in quantizer.parameters() if p.requires_grad]
    moved = {id(p) for p in codebook}
    kept = [{**group, "params": [p for p in group["params"] if id(p) not in moved]} for group in groups]
    return [group for group in kept if group["params"]] + [
        {"name": "tokenizer/codebook", "params": codebook, "lr": lr, "weight_decay": 0.0}]


def undecayed_names(module: nn.Module) -> set[str]:
    """The parameters of ``module`` AdamW leaves without weight decay, as timm, VQGAN and Hugging Face's Trainer
    do: biases, norm weights and other vectors; codebooks (every parameter of a quantizer: decay would shrink the
    codes the encoder is matched against); and what a submodule lists in timm's ``no_weight_decay()`` (learned
    positions, class tokens). Embedding tables of the LLM are decayed, as Hugging Face's Trainer does."""
    names = {n for n, p in module.named_parameters() if p.ndim < 2}
    for prefix, submodule in module.named_modules():
        joined = f"{prefix}." if prefix else ""
        if isinstance(submodule, Quantizer):
            names |= {joined + n for n, _ in submodule.named_parameters()}
        listed = getattr(submodule, "no_weight_decay", None)
        if callable(listed):
            names |= {joined + n for n in listed()}
    return names


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
