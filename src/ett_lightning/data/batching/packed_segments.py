"""Where each sample of a packed batch sits: the index maps that let attention see packed samples one per row
(:mod:`ett_lightning.models.segment_attention`), built by the collator, free of any model code."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class PackedSegments:
    """Index maps between packed positions (row x width, flattened) and samples one per row (sample x longest).

    ``gather`` [samples, longest]: for each unpacked position, its packed position, or ``rows * width`` (a zero
    row appended to the packed tensor) past the sample's end. ``scatter`` [rows, width]: the reverse, with
    ``samples * longest`` for the padding at the end of packed rows. Built by the collator on the host, they reach
    the device with the batch, so a training step reads nothing back from it.
    """

    gather: Tensor
    scatter: Tensor

    @classmethod
    def from_lengths(cls, lengths: list[list[int]], width: int) -> PackedSegments:
        """``lengths[r]``: the token counts of row r's samples, in order."""
        flat = [length for row in lengths for length in row]
        longest, rows = max(flat), len(lengths)
        gather = torch.full((len(flat), longest), rows * width, dtype=torch.long)
        scatter = torch.full((rows, width), len(flat) * longest, dtype=torch.long)
        sample = 0
        for row, row_lengths in enumerate(lengths):
            start = 0
            for length in row_lengths:
                gather[sample, :length] = torch.arange(row * width + start, row * width + start + length)
                scatter[row, start: start + length] = torch.arange(sample * longest, sample * longest + length)
                start, sample = start + length, sample + 1
        return cls(gather, scatter)
