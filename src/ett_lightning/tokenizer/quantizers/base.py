"""What every quantizer shares: a codebook, nearest-code lookup and the VQ loss terms."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
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
    """Codebook of ``codebook_size`` x ``code_dim`` vectors, stored as ``embedding`` (the public checkpoints' name).

    With ``l2_norm`` latents and codes are compared and returned on the unit sphere (LlamaGen style).
    Subclasses implement :meth:`quantize_flat`. :meth:`forward` runs it in float32 with autocast off: under
    ``bf16-mixed`` autocast would otherwise compute the latent-code products in bf16 (8 mantissa bits), and a few
    per cent of tokens would pick another code than in float32.

    Args:
        codebook_size: number of codes.
        code_dim: dimension of each code.
        beta: the weight VQ-VAE calls beta (where it applies is the subclass's, as in its authors' code).
        l2_norm: compare latents and codes on the unit sphere (LlamaGen style).
        entropy_weight: weight of the entropy penalty (:meth:`add_entropy_penalty`; 0 switches it off).
        entropy_temperature: temperature of the code logits the entropy penalty reads.
    """

    def __init__(self, codebook_size: int, code_dim: int, beta: float = 0.25, l2_norm: bool = False,
                 entropy_weight: float = 0.0, entropy_temperature: float = 0.01) -> None:
        super().__init__()
        if codebook_size < 2 or code_dim < 1:
            raise ValueError(f"codebook needs >= 2 codes and dim >= 1, got {codebook_size} x {code_dim}")
        self.codebook_size = codebook_size
        self.code_dim = code_dim
        self.beta = beta
        self.l2_norm = l2_norm
        self.entropy_weight = entropy_weight
        self.entropy_temperature = entropy_temperature
        self.embedding = nn.Embedding(codebook_size, code_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / codebook_size, 1.0 / codebook_size)

    def hparams(self) -> dict[str, Any]:
        """Constructor arguments, for rebuilding this quantizer from an export."""
        return dict(codebook_size=self.codebook_size, code_dim=self.code_dim, beta=self.beta, l2_norm=self.l2_norm,
                    entropy_weight=self.entropy_weight, entropy_temperature=self.entropy_temperature)

    def add_entropy_penalty(self, logits: Tensor, losses: dict[str, Tensor]) -> None:
        """With ``entropy_weight`` > 0: ``sample_entropy`` (of each token's softmax over the code ``logits`` divided
        by ``entropy_temperature``, minimised) and ``codebook_entropy`` (of their batch mean, maximised) into
        ``losses``, and ``entropy_weight * (sample_entropy - codebook_entropy)`` into its ``quantizer`` objective:
        tokens pushed to pick one code each, the batch to spread over the codebook."""
        if self.entropy_weight > 0:
            sample, mean = entropies(logits / self.entropy_temperature)
            losses.update(sample_entropy=sample, codebook_entropy=mean)
            losses["quantizer"] = losses["quantizer"] + self.entropy_weight * (sample - mean)

    def codebook(self) -> Tensor:
        """The codebook as the quantizer uses it (normalised when ``l2_norm``)."""
        weight = self.embedding.weight
        return F.normalize(weight, dim=-1) if self.l2_norm else weight

    def embed(self, indices: Tensor) -> Tensor:
        """Codes for ``indices`` of any shape -> [..., D]."""
        return F.embedding(indices, self.codebook())

    def flatten_latents(self, z: Tensor) -> Tensor:
        """[B, D, H, W] -> [B*H*W, D] in float32, normalised when ``l2_norm``."""
        if z.shape[1] != self.code_dim:
            raise ValueError(f"quantizer expects {self.code_dim} latent channels, got tensor of shape {tuple(z.shape)}")
        flat = z.permute(0, 2, 3, 1).reshape(-1, self.code_dim).float()
        return F.normalize(flat, dim=-1) if self.l2_norm else flat


    @staticmethod
    def vq_terms(flat: Tensor, codes: Tensor) -> dict[str, Tensor]:
        """The two VQ-VAE terms, unweighted: ``codebook = mean((c - sg(z))^2)`` pulls the selected codes to the
        encoder, ``commitment = mean((sg(c) - z)^2)`` the encoder to its codes."""
        return {"codebook": F.mse_loss(codes, flat.detach()), "commitment": F.mse_loss(flat, codes.detach())}

    def forward(self, z: Tensor) -> QuantizerOutput:
        """[B, D, H, W] latents -> codes on the same grid, in ``z``'s dtype; the lookup itself in float32."""
        with torch.autocast(z.device.type, enabled=False):
            quantized, indices, losses = self.quantize_flat(self.flatten_latents(z))
        b, _, h, w = z.shape
        quantized = quantized.reshape(b, h, w, self.code_dim).permute(0, 3, 1, 2).to(z.dtype)
        return QuantizerOutput(quantized.contiguous(), indices.reshape(b, h, w), losses)

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
