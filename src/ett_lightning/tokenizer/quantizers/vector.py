"""Straight-through vector quantizer (VQ-VAE / VQGAN / LlamaGen)."""

from __future__ import annotations

from torch import Tensor

from ett_lightning.tokenizer.quantizers.base import squared_distances
from ett_lightning.tokenizer.quantizers.codebook import CodebookQuantizer


class VectorQuantizer(CodebookQuantizer):
    """Nearest-code quantization with a two-sided straight-through estimator.

    The output has the value of the nearest code. Its gradient reaches the encoder (straight-through, as in
    VQ-VAE) *and* the selected codebook rows, so that a downstream loss (ETT's caption loss) tunes the codebook
    embeddings the LLM reads, not only the encoder.

    Its objective is taming's and LlamaGen's: ``codebook + beta * commitment``, with ``codebook = mean((c - sg(z))^2)``
    (pulls the selected codes to the encoder) and ``commitment = mean((sg(c) - z)^2)`` (pulls the encoder to its
    codes). ``entropy_weight`` > 0 adds ``entropy_weight * (sample_entropy - codebook_entropy)`` over the soft
    assignments ``softmax(-||z - c||^2 / entropy_temperature)``: each token's distribution is pushed to be sharp and
    their batch mean to spread over the codebook, the penalty lookup-free quantization (MAGVIT-v2) uses against
    codebook collapse, here on an explicit codebook (equal to vector-quantize-pytorch's ``LFQ`` entropy terms when
    the codebook is LFQ's, tested).

    Args:
        codebook_size: number of codes.
        code_dim: dimension of each code.
        beta: weight of the commitment term.
        l2_norm: compare latents and codes on the unit sphere (LlamaGen style).
        entropy_weight: weight of the entropy penalty (0 switches it off).
        entropy_temperature: temperature of the soft assignments of the entropy penalty.
    """

    def quantize_flat(self, flat: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        distances = squared_distances(flat, self.codebook())
        indices = distances.argmin(dim=1)
        codes = self.embed(indices).float()
        losses = self.vq_terms(flat, codes)
        losses["quantizer"] = losses["codebook"] + self.beta * losses["commitment"]
        self.add_entropy_penalty(-distances, losses)
        return codes + (flat - flat.detach()), indices, losses
