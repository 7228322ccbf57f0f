"""What the tokenizer needs from every quantizer: codes on the latent grid, their indices, the loss terms, and
index -> code."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn


@dataclass
class QuantizerOutput:
    """``quantized`` [B, D, H, W] has the value of the selected codes and a gradient path to the encoder.

    ``losses`` holds the quantizer's terms unweighted, by name, and its objective, weighted as the quantizer's
    authors train it, under ``"quantizer"``."""

    quantized: Tensor
    indices: Tensor
    losses: dict[str, Tensor]


class Quantizer(nn.Module):
    """``codebook_size`` codes of ``code_dim`` values; the code vectors are what the projector reads.

    Explicit codebooks (:class:`CodebookQuantizer`: VQ, IBQ) store their codes as a trained table; implicit ones
    (:class:`LookupFreeQuantizer`, :class:`FiniteScalarQuantizer`) compute them from the index, so only the encoder
    and decoder around them can be tuned (``learned_codebook`` is False). Subclasses implement
    :meth:`quantize_flat`, :meth:`codebook` and :meth:`hparams`. :meth:`forward` runs the quantization in float32
    with autocast off: under ``bf16-mixed`` autocast would otherwise compute the latent-code products in bf16
    (8 mantissa bits), and a few per cent of tokens would pick another code than in float32.
    """

    learned_codebook = False

    def __init__(self, codebook_size: int, code_dim: int) -> None:
        super().__init__()
        if codebook_size < 2 or code_dim < 1:
            raise ValueError(f"codebook needs >= 2 codes and dim >= 1, got {codebook_size} x {code_dim}")
        self.codebook_size = codebook_size
        self.code_dim = code_dim

    def hparams(self) -> dict[str, Any]:
        """Constructor arguments, for rebuilding this quantizer from an export."""
        raise NotImplementedError

    def codebook(self) -> Tensor:
        """Every code, [codebook_size, code_dim], as the quantizer uses it."""
        raise NotImplementedError

    def embed(self, indices: Tensor) -> Tensor:
        """Codes for ``indices`` of any shape -> [..., D]."""
        return nn.functional.embedding(indices, self.codebook())

    def flatten_latents(self, z: Tensor) -> Tensor:
        """[B, D, H, W] -> [B*H*W, D] in float32."""
        if z.shape[1] != self.code_dim:
            raise ValueError(f"quantizer expects {self.code_dim} latent channels, got tensor of shape {tuple(z.shape)}")
        return z.permute(0, 2, 3, 1).reshape(-1, self.code_dim).float()

    def forward(self, z: Tensor) -> QuantizerOutput:
        """[B, D, H, W] latents -> codes on the same grid, in ``z``'s dtype; the lookup itself in float32."""
        with torch.autocast(z.device.type, enabled=False):
            quantized, indices, losses = self.quantize_flat(self.flatten_latents(z))
        b, _, h, w = z.shape
        quantized = quantized.reshape(b, h, w, self.code_dim).permute(0, 3, 1, 2).to(z.dtype)
        return QuantizerOutput(quantized.contiguous(), indices.long().reshape(b, h, w), losses)

    def quantize_flat(self, flat: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Float32 latents [N, D] -> (codes [N, D] with the gradient path to the encoder, indices [N], losses: the
        unweighted terms and the weighted objective under ``"quantizer"``)."""
        raise NotImplementedError


def squared_distances(flat: Tensor, codebook: Tensor) -> Tensor:
    """||x - c||^2 for every row of ``flat`` against every code, without materialising the differences."""
    codebook = codebook.float()
    return flat.pow(2).sum(1, keepdim=True) - 2.0 * flat @ codebook.t() + codebook.pow(2).sum(1)[None]


def entropies(logits: Tensor) -> tuple[Tensor, Tensor]:
    """The mean entropy of each row's softmax, and the entropy of the rows' mean distribution."""
    log_probs = logits.log_softmax(dim=1)
    probs = log_probs.exp()
    sample = -(probs * log_probs).sum(dim=1).mean()
    mean_probs = probs.mean(dim=0)
    return sample, -(mean_probs * torch.log(mean_probs + 1e-5)).sum()


__all__ = ["Quantizer", "QuantizerOutput", "entropies", "squared_distances"]
