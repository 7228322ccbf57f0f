"""Lookup-free quantization (LFQ: MAGVIT-v2; Open-MAGVIT2's objective)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ett_lightning.tokenizer.quantizers.base import Quantizer, entropies
from ett_lightning.user_errors import UserError


class LookupFreeQuantizer(Quantizer):
    """Each of the ``bits`` latent channels becomes -1 or +1 by its sign: ``2 ** bits`` codes and no table.

    The projector reads the code vector (the +-1 bits), and the caption loss reaches the encoder through the
    straight-through sign: ETT's gradient path, minus a codebook to tune. An index weighs bit ``d`` (channel ``d``)
    by ``2 ** d``, as Open-MAGVIT2 counts, so its checkpoints' indices carry over (vector-quantize-pytorch's ``LFQ``
    counts from the other end). The objective is Open-MAGVIT2's: ``entropy_weight * (sample_entropy -
    diversity_gamma * codebook_entropy) + commitment_weight * commitment``, with the entropies of
    ``softmax(2 z.c / entropy_temperature)`` over every code ``c`` (of each token, minimised; of their batch mean,
    its log taken of the mean + 1e-5, maximised) and ``commitment = mean((z - sg(q))^2)``. It is not
    vector-quantize-pytorch's: that library clamps the mean's probabilities at 1e-5, so with many more codes than
    tokens (2**18) most codes pass no gradient and the batch term's gradient differs from the one Open-MAGVIT2
    trained with (tests/tokenizer/test_implicit_quantizers.py compares both). The entropies need tokens x
    ``2 ** bits`` matrices (about five alive at once in the backward pass): they are computed in training mode only.

    Args:
        bits: latent channels, each one bit of the index (Open-MAGVIT2: 18, 2**18 codes).
        entropy_weight: weight of the entropy term (Open-MAGVIT2 trains with 0.1; 0 switches it off).
        commitment_weight: weight of the commitment term (Open-MAGVIT2: 0.25).
        diversity_gamma: weight of the batch entropy inside the entropy term.
        entropy_temperature: temperature of the soft code assignments of the entropy term.
    """

    def __init__(self, bits: int, entropy_weight: float = 0.1, commitment_weight: float = 0.25,
                 diversity_gamma: float = 1.0, entropy_temperature: float = 0.01) -> None:
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 24:
            raise UserError(f"LookupFreeQuantizer takes 1 to 24 bits (Open-MAGVIT2: 18), got {bits}")
        super().__init__(2**bits, bits)
        self.entropy_weight = entropy_weight
        self.commitment_weight = commitment_weight
        self.diversity_gamma = diversity_gamma
        self.entropy_temperature = entropy_temperature
        self.register_buffer("bit_values", 2 ** torch.arange(bits), persistent=False)

    def hparams(self) -> dict[str, Any]:
        return dict(bits=self.code_dim, entropy_weight=self.entropy_weight, commitment_weight=self.commitment_weight,
                    diversity_gamma=self.diversity_gamma, entropy_temperature=self.entropy_temperature)

    def codebook(self) -> Tensor:
        return self.embed(torch.arange(self.codebook_size, device=self.bit_values.device))

    def embed(self, indices: Tensor) -> Tensor:
        bits = (indices[..., None].long() & self.bit_values) != 0
        return bits.float() * 2 - 1

    def quantize_flat(self, flat: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        signs = torch.where(flat > 0, 1.0, -1.0)
        indices = ((flat > 0).long() * self.bit_values).sum(-1)
        losses = {"commitment": F.mse_loss(flat, signs)}
        losses["quantizer"] = self.commitment_weight * losses["commitment"]
        if self.training and self.entropy_weight > 0:
            sample, batch = entropies(2 * flat @ self.codebook().t() / self.entropy_temperature)
            losses.update(sample_entropy=sample, codebook_entropy=batch)
            losses["quantizer"] = losses["quantizer"] + self.entropy_weight * (sample - self.diversity_gamma * batch)
        return flat + (signs - flat).detach(), indices, losses
