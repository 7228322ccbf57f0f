"""Code counts over the last training steps: the codebook statistics of what the tokenizer emits while it trains."""

from __future__ import annotations

import math
from collections import deque

import torch
from torch import Tensor

from ett_lightning.tokenizer.base import code_histogram, histogram_statistics


class CodeWindow:
    """Counts of each code over the last ``blocks`` blocks of training steps, kept on the device (one scatter-add a
    step, nothing read back until :meth:`totals`). A block ends at each health check, so the window is the last
    ``blocks`` check intervals.

    Args:
        codebook_size: number of codes.
        blocks: how many check intervals the window spans.
    """

    def __init__(self, codebook_size: int, blocks: int) -> None:
        if blocks < 1:
            raise ValueError(f"the code window needs >= 1 block, got {blocks}")
        self.codebook_size = codebook_size
        self.closed: deque[Tensor] = deque(maxlen=blocks - 1)
        self.current: Tensor | None = None

    def add(self, indices: Tensor) -> None:
        """Counts one step's code indices (any shape)."""
        counts = code_histogram(indices.detach(), self.codebook_size, dtype=torch.int64)
        self.current = counts if self.current is None else self.current.add_(counts)

    def close_block(self) -> Tensor:
        """The window's counts (the closed blocks and the current one), then starts a new block."""
        parts = [*self.closed, *([self.current] if self.current is not None else [])]
        totals = torch.stack(parts).sum(0) if parts else torch.zeros(self.codebook_size, dtype=torch.int64)
        if self.current is not None:
            self.closed.append(self.current)  # with blocks=1 the deque holds nothing: the window is one block
        self.current = None
        return totals


def code_statistics(counts: Tensor, dead_below: int = 1) -> dict[str, float]:
    """Codebook statistics of a code histogram.

    ``usage``: share of codes used at least once; ``perplexity``: exp of the entropy of the code frequencies (the
    codebook size when every code is used equally); ``entropy``: that entropy over log(codebook size), in [0, 1];
    ``dead_share``: share of codes used fewer than ``dead_below`` times (with 1, the codes never used).
    """
    stats = histogram_statistics(counts.double())
    return {"usage": float(stats["usage"]), "perplexity": float(stats["perplexity"]),
            "entropy": float(stats["entropy"]) / math.log(counts.numel()),
            "dead_share": float((counts < dead_below).double().mean())}
