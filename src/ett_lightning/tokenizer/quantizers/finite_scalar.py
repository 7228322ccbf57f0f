"""Finite scalar quantization (FSQ: Mentzer et al. 2023; the Cosmos tokenizers), on vector-quantize-pytorch's
``FSQ``."""

from __future__ import annotations

from collections.abc import Sequence
from math import prod
from typing import Any

import torch
from torch import Tensor

from ett_lightning.tokenizer.quantizers.base import Quantizer
from ett_lightning.user_errors import UserError


class FiniteScalarQuantizer(Quantizer):
    """Channel ``d`` of the latent is bounded and rounded to one of ``levels[d]`` values in [-1, 1]: the product of
    the levels is the number of codes, with no table and no loss.

    The projector reads the rounded values, and the caption loss reaches the encoder through the straight-through
    rounding. The index is the mixed-radix number of the rounded levels, channel 0 the least significant digit
    (vector-quantize-pytorch's order).

    Args:
        levels: values per latent channel, each at least 3, at most 2**20 codes in all (e.g. [8, 5, 5, 5]: 1000 codes
            of 4 channels).
    """

    def __init__(self, levels: Sequence[int]) -> None:
        levels = list(levels) if isinstance(levels, list | tuple) else []
        if (not levels or any(isinstance(n, bool) or not isinstance(n, int) for n in levels) or min(levels) < 3
                or prod(levels) > 2**20):
            raise UserError(f"FiniteScalarQuantizer needs levels of at least 3 values each and at most 2**20 codes "
                             f"in all, got {levels}")
        super().__init__(prod(levels), len(levels))
        from vector_quantize_pytorch import FSQ  # here: importing the library takes a second (einx)

        self.levels = levels
        with torch.device("cpu"):  # its constructor reads its levels back (.item()): no meta-device build
            self.fsq = FSQ(levels, dim=len(levels))

    def hparams(self) -> dict[str, Any]:
        return dict(levels=list(self.levels))

    def codebook(self) -> Tensor:
        return self.fsq.implicit_codebook

    def embed(self, indices: Tensor) -> Tensor:
        codes = self.fsq.indices_to_codes(indices.reshape(1, -1))
        return codes.reshape(*indices.shape, self.code_dim)

    def quantize_flat(self, flat: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        codes, indices = self.fsq(flat[None])
        return codes[0], indices[0], {"quantizer": torch.zeros((), device=flat.device)}
