"""Index backpropagation quantizer (IBQ, Shi et al. 2024), the tokenizer family ETT tunes."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ett_lightning.tokenizer.quantizers.codebook import CodebookQuantizer


class IndexBackpropQuantizer(CodebookQuantizer):
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

    def quantize_flat(self, flat: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        codebook = self.codebook().float()
        logits = flat @ codebook.t()
        indices = logits.argmax(dim=1)
        probs = logits.softmax(dim=1)
        codes = self.embed(indices).float()
        quantized = codes + (probs - probs.detach()) @ codebook
        losses = {"quantization": F.mse_loss(quantized, flat), **self.vq_terms(flat, codes)}
        losses["quantizer"] = losses["quantization"] + losses["commitment"] + self.beta * losses["codebook"]
        self.add_entropy_penalty(logits, losses)
        return quantized, indices, losses

