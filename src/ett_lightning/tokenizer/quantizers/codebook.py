"""Quantizers with an explicit, trained codebook table (VQ, IBQ): nearest-code lookup and the VQ loss terms."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from ett_lightning.tokenizer.quantizers.base import Quantizer, entropies


class CodebookQuantizer(Quantizer):
    """Codebook of ``codebook_size`` x ``code_dim`` vectors, stored as ``embedding`` (the public checkpoints' name).

    With ``l2_norm`` latents and codes are compared and returned on the unit sphere (LlamaGen style).

    Args:
        codebook_size: number of codes.
        code_dim: dimension of each code.
        beta: the weight VQ-VAE calls beta (where it applies is the subclass's, as in its authors' code).
        l2_norm: compare latents and codes on the unit sphere (LlamaGen style).
        entropy_weight: weight of the entropy penalty (:meth:`add_entropy_penalty`; 0 switches it off).
        entropy_temperature: temperature of the code logits the entropy penalty reads.
    """

    learned_codebook = True

    def __init__(self, codebook_size: int, code_dim: int, beta: float = 0.25, l2_norm: bool = False,
                 entropy_weight: float = 0.0, entropy_temperature: float = 0.01) -> None:
        super().__init__(codebook_size, code_dim)
        self.beta = beta
        self.l2_norm = l2_norm
        self.entropy_weight = entropy_weight
        self.entropy_temperature = entropy_temperature
        self.embedding = nn.Embedding(codebook_size, code_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / codebook_size, 1.0 / codebook_size)

    def hparams(self) -> dict[str, Any]:
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

    def flatten_latents(self, z: Tensor) -> Tensor:
        """[B, D, H, W] -> [B*H*W, D] in float32, normalised when ``l2_norm``."""
        flat = super().flatten_latents(z)
        return F.normalize(flat, dim=-1) if self.l2_norm else flat

    @staticmethod
    def vq_terms(flat: Tensor, codes: Tensor) -> dict[str, Tensor]:
        """The two VQ-VAE terms, unweighted: ``codebook = mean((c - sg(z))^2)`` pulls the selected codes to the
        encoder, ``commitment = mean((sg(c) - z)^2)`` the encoder to its codes."""
        return {"codebook": F.mse_loss(codes, flat.detach()), "commitment": F.mse_loss(flat, codes.detach())}
