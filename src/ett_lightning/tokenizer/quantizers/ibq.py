"""Index backpropagation quantizer (IBQ, Shi et al. 2024), the tokenizer family ETT tunes."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor

from ett_lightning.tokenizer.quantizers.base import Quantizer, entropies


class IndexBackpropQuantizer(Quantizer):
    """Straight-through over a softmax of code logits, so *every* codebook entry receives gradient.

    Logits are dot products of latents with codes. The forward value is the argmax code; the backward pass is
    that of ``softmax(logits) @ codebook``, written as ``codes + (p - sg(p)) @ codebook`` so the one-hot matrix of
    the textbook form ``(onehot - sg(p) + p) @ codebook`` is never built (same value, same gradient).

    The objective is SEED-Voken's (``IndexPropagationQuantize``, the paper's tokenizer), over latents ``z``, the
    output ``z_q`` above and the selected codes ``c``:
    ``quantization + commitment + beta * codebook`` with ``quantization = mean((z_q - z)^2)`` (through the softmax:
    reaches the encoder and every code), ``commitment = mean((sg(c) - z)^2)`` (encoder only) and
    ``codebook = mean((c - sg(z))^2)`` (selected codes only). ``entropy_weight`` > 0 adds
    ``entropy_weight * (sample_entropy - codebook_entropy)`` on logits divided by ``entropy_temperature``: the
    entropy of each token's code distribution, minimised, and of their batch mean, maximised (its log taken of the
    mean plus 1e-5, as upstream).

    Args:
        codebook_size: number of codes.
        code_dim: dimension of each code.
        beta: weight of the codebook term.
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
        losses = {"quantization": F.mse_loss(quantized, flat), **self.vq_terms(flat, codes)}
        objective = losses["quantization"] + losses["commitment"] + self.beta * losses["codebook"]
        if self.entropy_weight > 0:
            sample, mean = entropies(logits / self.entropy_temperature)
            losses.update(sample_entropy=sample, codebook_entropy=mean)
            objective = objective + self.entropy_weight * (sample - mean)
        losses["quantizer"] = objective
        return quantized, indices, losses

