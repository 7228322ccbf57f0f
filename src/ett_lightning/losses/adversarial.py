"""The adversarial part of a VQ tokenizer's objective, as taming, LlamaGen and IBQ train their tokenizers.

One call returns both players' terms, routed so that a single backward pass trains each on its own objective:
the generator term reaches the reconstructions (hence the tokenizer) but not the discriminator, whose weights
it sees detached; the discriminator term sees detached images and reconstructions. The module's one optimizer
gives the discriminator its own parameter group (learning rate, betas, no weight decay, its own clipping).
That keeps automatic optimization: ``max_steps`` counts steps, not optimizer calls, gradient accumulation and
fp16 scaling work, and DDP needs no ``find_unused_parameters`` (every weight gets a gradient, zero before
``start_step``).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ett_lightning.losses.discriminator import PatchGANDiscriminator

GanLoss = Literal["hinge", "non_saturating"]


class AdversarialLoss(nn.Module):
    """Returns ``(generator_term, discriminator_term, parts)``: ``d_weight * g_adv`` and
    ``discriminator_weight * d_loss`` from step
    ``start_step`` on; before it, no generator term and ``0 * d_loss`` (the discriminator neither trains nor
    contributes). ``weight`` is set by :class:`ETTLoss` from its ``adversarial_weight``.

    ``d_weight = weight * clamp(|grad_last nll| / (|grad_last g_adv| + 1e-4), 0, max_adaptive_weight)`` with
    ``adaptive_weight`` (taming's balance of reconstruction and adversarial gradients at the decoder's last
    layer), else ``weight``. ``lecam_weight`` > 0 adds LeCam regularisation (Tseng et al. 2021) to the
    discriminator, against EMAs of its real and fake logits. ``learning_rate`` and ``betas`` are the
    discriminator's optimizer settings.

    Args:
        discriminator: the discriminator network (default: a PatchGAN).
        weight: generator term weight (set by ETTLoss from its ``adversarial_weight``).
        loss: GAN loss: ``hinge`` or ``non_saturating``.
        start_step: global step from which the discriminator trains and the generator term counts.
        adaptive_weight: balance the generator term by the ratio of gradient norms at the decoder's last layer.
        max_adaptive_weight: upper clamp of that ratio.
        lecam_weight: weight of the LeCam regulariser on the discriminator (0 switches it off).
        lecam_decay: EMA decay of the real and fake logits LeCam compares against.
        learning_rate: the discriminator's AdamW learning rate.
        betas: the discriminator's AdamW betas.
        discriminator_weight: weight of the discriminator's own loss.
    """

    def __init__(
        self,
        discriminator: nn.Module | None = None,
        weight: float = 0.1,
        loss: GanLoss = "hinge",
        start_step: int = 0,
        adaptive_weight: bool = True,
        max_adaptive_weight: float = 1e4,
        lecam_weight: float = 0.0,
        lecam_decay: float = 0.999,
        learning_rate: float = 1e-4,
        betas: tuple[float, float] = (0.5, 0.9),
        discriminator_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if loss not in ("hinge", "non_saturating"):
            raise ValueError(f"adversarial loss must be 'hinge' or 'non_saturating', got {loss!r}")
        if min(weight, lecam_weight, start_step, discriminator_weight) < 0:
            raise ValueError("adversarial weight, discriminator_weight, lecam_weight and start_step must be >= 0")
        self.discriminator = discriminator if discriminator is not None else PatchGANDiscriminator()
        self.weight = weight
        self.loss = loss
        self.start_step = start_step
        self.adaptive_weight = adaptive_weight
        self.max_adaptive_weight = max_adaptive_weight
        self.lecam_weight = lecam_weight
        self.lecam_decay = lecam_decay
        self.learning_rate = learning_rate
        self.betas = tuple(betas)
        self.discriminator_weight = discriminator_weight
        self.register_buffer("ema_real", torch.zeros(()))
        self.register_buffer("ema_fake", torch.zeros(()))

    def forward(self, images: Tensor, reconstructions: Tensor, nll: Tensor, last_layer: Tensor,
                step: int) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        d_loss, parts = self.discriminator_loss(images, reconstructions)
        if step < self.start_step:
            zero = d_loss.new_zeros(())
            return zero, 0.0 * d_loss, {**parts, "g_adv": zero, "d_weight": zero}
        g_adv = self.generator_loss(reconstructions)
        d_weight = self.generator_weight(nll, g_adv, last_layer)
        d_term = self.discriminator_weight * d_loss
        return d_weight * g_adv, d_term, {**parts, "g_adv": g_adv, "d_weight": d_weight}

    def generator_loss(self, reconstructions: Tensor) -> Tensor:
        """The generator's term, through the discriminator with its weights detached (no gradient reaches them)."""
        frozen = {name: p.detach() for name, p in self.discriminator.named_parameters()}
        logits = functional_call(self.discriminator, {**frozen, **dict(self.discriminator.named_buffers())},
                                 (reconstructions.to(self.weights_dtype()),))
        return -logits.mean() if self.loss == "hinge" else F.softplus(-logits).mean()

    def discriminator_loss(self, images: Tensor, reconstructions: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The discriminator's term on detached inputs, plus LeCam when configured; its logged parts."""
        dtype = self.weights_dtype()
        real = self.discriminator(images.detach().to(dtype))
        fake = self.discriminator(reconstructions.detach().to(dtype))
        if self.loss == "hinge":
            d_loss = 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())
        else:
            d_loss = 0.5 * (F.softplus(-real).mean() + F.softplus(fake).mean())
        parts = {"logits_real": real.detach().float().mean(), "logits_fake": fake.detach().float().mean()}
        if self.lecam_weight > 0:
            parts["lecam"] = lecam_regularizer(real, fake, self.ema_real, self.ema_fake)
            d_loss = d_loss + self.lecam_weight * parts["lecam"]
            if self.training:
                self.ema_real.lerp_(parts["logits_real"], 1.0 - self.lecam_decay)
                self.ema_fake.lerp_(parts["logits_fake"], 1.0 - self.lecam_decay)
        parts["d_loss"] = d_loss
        return d_loss, parts

    def weights_dtype(self) -> torch.dtype:
        """The dtype its inputs are cast to: under FSDP2 with a bf16 policy the reconstructions come in bf16 while
        the discriminator keeps fp32 weights (under autocast the kernels choose their own precision either way)."""
        return next(self.discriminator.parameters()).dtype

    def generator_weight(self, nll: Tensor, g_adv: Tensor, last_layer: Tensor) -> Tensor:
        if not self.adaptive_weight or not torch.is_grad_enabled():
            return g_adv.new_tensor(self.weight)
        return self.weight * adaptive_weight(nll, g_adv, last_layer, self.max_adaptive_weight)


def adaptive_weight(nll: Tensor, g_adv: Tensor, last_layer: Tensor, max_weight: float = 1e4) -> Tensor:
    """``|d nll / d last_layer| / (|d g_adv / d last_layer| + 1e-4)``, clamped to [0, max_weight], detached."""
    nll_grad = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_adv, last_layer, retain_graph=True)[0]
    return (nll_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0.0, max_weight).detach()


def lecam_regularizer(real: Tensor, fake: Tensor, ema_real: Tensor, ema_fake: Tensor) -> Tensor:
    """``mean(relu(real - ema_fake)^2) + mean(relu(ema_real - fake)^2)``: keeps logits near their running means."""
    return F.relu(real - ema_fake).pow(2).mean() + F.relu(ema_real - fake).pow(2).mean()
