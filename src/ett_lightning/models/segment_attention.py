"""SDPA for packed rows that attends sample by sample, so packing saves attention work instead of adding to it.

Given only position ids that restart per sample, Hugging Face's SDPA path builds a block-diagonal mask over each
packed row and computes every block of it, masked or not: a row of width W costs W^2 of attention, against the
sum of l^2 over its samples. With rows of 512 tokens holding samples of about 150, that is three times the
attention of plain padding, which made packed steps slower than padded ones on the demo's small LLM. Here the
projections and MLPs stay packed; only attention sees the samples one per row (right padded to the longest, one
causal SDPA call per layer, no mask), through two index gathers. Calls without :class:`PackedSegments` (validation,
generation with its padding masks) go to Hugging Face's SDPA unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

SEGMENT_SDPA = "ett_segment_sdpa"


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


def regroup(tensor: Tensor, index: Tensor) -> Tensor:
    """[G, heads, L, dim] -> [index rows, heads, index columns, dim]: positions picked by ``index`` from the
    flattened positions plus one zero row (the index of padding). ``index_select``, whose backward is an
    ``index_add``, not the far slower accumulating ``index_put`` of advanced indexing."""
    heads, dim = tensor.shape[1], tensor.shape[3]
    flat = tensor.transpose(1, 2).reshape(-1, heads, dim)
    flat = torch.cat([flat, flat.new_zeros(1, heads, dim)])
    return flat.index_select(0, index.flatten()).view(*index.shape, heads, dim).transpose(1, 2)


def segment_sdpa_attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor,
                           attention_mask: Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                           packed_segments: PackedSegments | None = None, **kwargs) -> tuple[Tensor, None]:
    """Hugging Face's attention-function signature: ``query`` [B, H, L, D], ``key``/``value`` [B, H_kv, L, D];
    returns [B, L, H, D]. Positions after a packed row's last sample are padding and get zeros."""
    if packed_segments is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    q, k, v = (regroup(t, packed_segments.gather) for t in (query, key, value))
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True, scale=scaling,
                                         enable_gqa=query.shape[1] != key.shape[1])
    return regroup(out, packed_segments.scatter).transpose(1, 2).contiguous(), None


AttentionInterface.register(SEGMENT_SDPA, segment_sdpa_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(SEGMENT_SDPA, sdpa_mask)
