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

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from ett_lightning.data.batching.packed_segments import PackedSegments

SEGMENT_SDPA = "ett_segment_sdpa"


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
