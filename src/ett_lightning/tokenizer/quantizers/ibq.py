"""Index backpropagation quantizer (IBQ, Shi et al. 2024), the tokenizer family ETT tunes."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ett_lightning.tokenizer.quantizers.base import Quantizer


class IndexBackpropQuantizer(Quantizer):
    """Straight-through over a softmax of code logits, so *every* codebook entry receives gradient.

    Logits are dot products of latents with codes. The forward value is the argmax code; the backward pass is
    that of ``softmax(logits) @ codebook``, written as ``codes + (p - sg(p)) @ codebook`` so the one-hot matrix of
    the textbook form ``(onehot - sg(p) + p) @ codebook`` is never built (same value, same gradient).

    ``entropy_weight`` > 0 adds the entropy regulariser: per-token entropy minimised, codebook-average entropy
    maximised, on logits sharpened by ``entropy_temperature``.

    Args:
        codebook_size: number of codes.
        code_dim: dimension of each code.
        beta: weight of the commitment term.
        l2_norm: compare latents and codes on the unit sphere.
        entropy_weight: weight of the entropy regulariser (0 switches it off).
        entropy_temperature: temperature that sharpens the logits of the entropy terms.
    """

    def __init__(
        self,
        codebook_size: int,
        code_dim: int,
        beta: float = 0.25,
        l2_norm: bool = False,
        entropy_weight: float = 0.0,
        entropy_temperature: float = 0.01,
    ) -> None:
        super().__init__(codebook_size, code_dim, beta, l2_norm)
        self.entropy_weight = entropy_weight
        self.entropy_temperature = entropy_temperature

    def hparams(self) -> dict[str, Any]:
        return {**super().hparams(), "entropy_weight": self.entropy_weight,
                "entropy_temperature": self.entropy_temperature}

    def quantize_flat(self, flat: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        codebook = self.codebook().float()
        logits = flat @ codebook.t()
        indices = logits.argmax(dim=1)
        probs = logits.softmax(dim=1)
        codes = self.embed(indices).float()
        quantized = codes + (probs - probs.detach()) @ codebook
        losses = self.vq_losses(flat, quantized)
        if self.entropy_weight > 0:
            losses["entropy"] = self.entropy_weight * entropy_regulariser(logits / self.entropy_temperature)
        return quantized, indices, losses


def entropy_regulariser(logits: Tensor) -> Tensor:
    """Mean per-token entropy minus the entropy of the average code distribution (low = confident and diverse)."""
    log_probs = logits.log_softmax(dim=1)
    probs = log_probs.exp()
    token_entropy = -(probs * log_probs).sum(dim=1).mean()
    mean_probs = probs.mean(dim=0)
    codebook_entropy = -(mean_probs * torch.log(mean_probs.clamp_min(1e-12))).sum()
    return token_entropy - codebook_entropy
