"""ETT's objective: caption loss plus alpha times the tokenizer's own VQ loss, every weight from config."""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from ett_lightning.losses.adversarial import AdversarialLoss
from ett_lightning.losses.perceptual import LPIPSLoss


class ETTLoss(nn.Module):
    """ETT's objective, ``total = w_cap * caption + alpha * vq``, with the tokenizer's own objective
    ``vq = w_rec * reconstruction + w_perc * perceptual + w_quant * quantizer + d_weight * g_adv``.

    ``quantizer`` is the quantizer's objective as its authors train it (:class:`IndexBackpropQuantizer`:
    SEED-Voken's IBQ loss; :class:`VectorQuantizer`: taming's), computed by the quantizer from its unweighted terms.
    ``g_adv`` is the generator's adversarial term and ``d_weight`` its adaptive weight (when ``adversarial_weight``
    > 0; a PatchGAN unless ``adversarial`` configures another). The discriminator's own objective is
    ``discriminator`` (``discriminator_weight * d_loss``); it is not part of ``total`` and reaches no generator
    parameter (see :class:`AdversarialLoss` for how one backward trains both).

    Returns ``(loss, parts)``: ``loss = total + discriminator`` is what the step backpropagates; ``parts`` holds every
    term unweighted under its own name (``caption``, ``reconstruction``, ``perceptual``, the quantizer's terms,
    ``g_adv``, ``d_loss``), the weighted objectives ``quantizer``, ``vq`` and ``total``, and ``discriminator``, which
    the module logs as ``train/<part>``. Without reconstructions (tokenizer frozen) only the caption term exists.
    ``perceptual`` defaults to VGG LPIPS when ``perceptual_weight`` > 0.

    Args:
        caption_weight: weight of the LLM's caption (next-token) loss.
        alpha: weight of the whole VQ part (reconstruction, perceptual, quantizer, adversarial).
        reconstruction_weight: weight of the pixel reconstruction term.
        reconstruction_loss: ``l1`` or ``l2`` pixel loss.
        perceptual_weight: weight of the LPIPS term (0 switches it off and builds no LPIPS).
        quantizer_weight: weight of the quantizer's objective.
        perceptual: the perceptual loss module (default: VGG LPIPS when ``perceptual_weight`` > 0).
        adversarial_weight: weight of the GAN generator term (0: no discriminator).
        adversarial: the adversarial loss and its discriminator (default: a PatchGAN when ``adversarial_weight`` > 0).
    """

    #: Called directly by tokenizer pre-training: under FSDP2 it gathers the loss's networks like ``forward``.
    fsdp_entry_methods = ("vq_loss",)

    def __init__(
        self,
        caption_weight: float = 1.0,
        alpha: float = 0.25,
        reconstruction_weight: float = 1.0,
        reconstruction_loss: Literal["l1", "l2"] = "l1",
        perceptual_weight: float = 1.0,
        quantizer_weight: float = 1.0,
        perceptual: nn.Module | None = None,
        adversarial_weight: float = 0.0,
        adversarial: AdversarialLoss | None = None,
    ) -> None:
        super().__init__()
        weights = dict(caption_weight=caption_weight, alpha=alpha, reconstruction_weight=reconstruction_weight,
                       perceptual_weight=perceptual_weight, quantizer_weight=quantizer_weight,
                       adversarial_weight=adversarial_weight)
        for name, value in weights.items():
            if value < 0:
                raise ValueError(f"loss weight {name} must be >= 0, got {value}")
        if reconstruction_loss not in ("l1", "l2"):
            raise ValueError(f"reconstruction_loss must be 'l1' or 'l2', got {reconstruction_loss!r}")
        self.caption_weight = caption_weight
        self.alpha = alpha
        self.reconstruction_weight = reconstruction_weight
        self.reconstruction_loss = reconstruction_loss
        self.perceptual_weight = perceptual_weight
        self.quantizer_weight = quantizer_weight
        self.perceptual = (perceptual or LPIPSLoss()) if perceptual_weight > 0 else None
        if adversarial is not None and adversarial_weight == 0:
            raise ValueError("loss.adversarial is configured but adversarial_weight is 0: set adversarial_weight > 0 "
                             "(e.g. 0.1) to train with a discriminator, or remove adversarial")
        self.adversarial = (adversarial or AdversarialLoss()) if adversarial_weight > 0 else None
        if self.adversarial is not None:
            self.adversarial.weight = adversarial_weight

    def forward(
        self,
        caption: Tensor,
        images: Tensor | None = None,
        reconstructions: Tensor | None = None,
        quant_losses: dict[str, Tensor] | None = None,
        last_layer: Tensor | None = None,
        step: int = 0,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        parts = {"caption": caption}
        total = self.caption_weight * caption
        if reconstructions is not None:
            vq, vq_parts = self.vq_loss(images, reconstructions, quant_losses or {}, last_layer, step)
            parts.update(vq_parts)
            total = total + self.alpha * vq
        parts["total"] = total
        return total + parts.get("discriminator", 0.0), parts

    def last_layer_of(self, tokenizer: nn.Module) -> Tensor | None:
        """The tokenizer's last decoder weight when the adversarial loss's adaptive weight needs it, else None: an
        unused weight passed in would still enter the graph (under FSDP2, as a shard of another unit)."""
        adversarial = self.adversarial
        return tokenizer.last_layer if adversarial is not None and adversarial.adaptive_weight else None

    def vq_loss(
        self, images: Tensor, reconstructions: Tensor, quant_losses: dict[str, Tensor],
        last_layer: Tensor | None = None, step: int = 0,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The tokenizer's own objective (what it was pre-trained with) and its parts.

        With the adversarial term, ``last_layer`` (the decoder's last weight, for the adaptive weight) and the
        global ``step`` are needed; ``parts["discriminator"]`` is then the discriminator's objective, for the caller
        to add to what it backpropagates. ``quant_losses`` are the quantizer's (its terms and, under
        ``"quantizer"``, its objective).
        """
        distance = F.l1_loss if self.reconstruction_loss == "l1" else F.mse_loss
        rec = distance(reconstructions.float(), images.float())
        parts = {"reconstruction": rec, **quant_losses}
        vq = self.reconstruction_weight * rec
        if self.perceptual is not None:
            parts["perceptual"] = self.perceptual(reconstructions, images)
            vq = vq + self.perceptual_weight * parts["perceptual"]
        if quant_losses:
            if "quantizer" not in quant_losses:
                raise ValueError(f"the quantizer returned terms {sorted(quant_losses)} without its objective: a "
                                 "Quantizer's losses hold its weighted objective under 'quantizer'")
            vq = vq + self.quantizer_weight * quant_losses["quantizer"]
        if self.adversarial is not None:
            if last_layer is None and self.adversarial.adaptive_weight:
                raise ValueError("the adversarial loss's adaptive weight needs the decoder's last layer: pass "
                                 "last_layer")
            nll = vq - self.quantizer_weight * parts.get("quantizer", 0.0)
            g_term, d_term, adversarial_parts = self.adversarial(images, reconstructions, nll, last_layer, step)
            parts.update(adversarial_parts, discriminator=d_term)
            vq = vq + g_term
        parts["vq"] = vq
        return vq, parts
