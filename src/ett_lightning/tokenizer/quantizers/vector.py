"""Straight-through vector quantizer (VQ-VAE / VQGAN / LlamaGen)."""

from __future__ import annotations

from torch import Tensor

from ett_lightning.tokenizer.quantizers.base import Quantizer, squared_distances


class VectorQuantizer(Quantizer):
    """Nearest-code quantization with a two-sided straight-through estimator.

    The output has the value of the nearest code. Its gradient reaches the encoder (straight-through, as in
    VQ-VAE) *and* the selected codebook rows, so that a downstream loss (ETT's caption loss) tunes the codebook
    embeddings the LLM reads, not only the encoder.

    Its objective is taming's and LlamaGen's: ``codebook + beta * commitment``, with ``codebook = mean((c - sg(z))^2)``
    (pulls the selected codes to the encoder) and ``commitment = mean((sg(c) - z)^2)`` (pulls the encoder to its
    codes).

    Args:
        codebook_size: number of codes.
        code_dim: dimension of each code.
        beta: weight of the commitment term.
        l2_norm: compare latents and codes on the unit sphere (LlamaGen style).
    """

    def quantize_flat(self, flat: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        indices = squared_distances(flat, self.codebook()).argmin(dim=1)
        codes = self.embed(indices).float()
        losses = self.vq_terms(flat, codes)
        losses["quantizer"] = losses["codebook"] + self.beta * losses["commitment"]
        return codes + (flat - flat.detach()), indices, losses
