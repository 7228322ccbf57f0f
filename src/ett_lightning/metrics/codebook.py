"""Codebook usage over an epoch: fraction of codes used and perplexity of the code histogram."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from ett_lightning.tokenizer.base import code_histogram, histogram_statistics


class CodebookUsage(Metric):
    """Accumulates a histogram of code indices (summed across DDP ranks).

    ``compute`` returns ``{"usage": fraction of codes hit at least once, "perplexity": exp(entropy)}``;
    perplexity equals the codebook size when every code is used equally often.
    """

    higher_is_better = True
    full_state_update = False

    def __init__(self, codebook_size: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.codebook_size = codebook_size
        self.add_state("counts", default=torch.zeros(codebook_size, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, indices: Tensor) -> None:
        flat = indices.flatten().long()
        if flat.numel() and (flat.min() < 0 or flat.max() >= self.codebook_size):
            raise ValueError(f"code indices must lie in [0, {self.codebook_size}), got {flat.min()}..{flat.max()}")
        self.counts += code_histogram(flat, self.codebook_size, dtype=torch.long)

    def compute(self) -> dict[str, Tensor]:
        stats = histogram_statistics(self.counts.double())
        return {"usage": stats["usage"].float(), "perplexity": stats["perplexity"].float()}
