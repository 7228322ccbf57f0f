"""Sequence packing: the samples of a batch share LLM rows, so the LLM's positions go to tokens, not padding.

Web captions have long-tailed lengths; padding every row to the longest caption spends a quarter of the LLM's
work on pads (measured in docs/performance.md). Packing keeps the batch's samples (so the loss, the mean over
their labelled tokens, is unchanged) and lays them end to end in fewer, balanced rows. Each sample's position ids
restart at 0, which Hugging Face models read as sample boundaries: SDPA and eager attention get a block-diagonal
causal mask, flash-attention its variable-length kernel, so no token attends to another sample.
"""

from __future__ import annotations

import heapq
import math


def pack_rows(lengths: list[int], pack_length: int, extra_rows: int = 3) -> list[list[int]]:
    """Sample indices per row: the layout with the fewest LLM positions (rows x longest row) among those with the
    fewest rows of at most ``pack_length`` tokens and up to ``extra_rows`` more rows.

    More rows can mean fewer positions: 16 samples of ~140 tokens fill 6 rows of 512 unevenly (3+3+3+3+2+2),
    8 rows of 2 exactly. Each row count is tried with :func:`balance`. A sample is never split; one longer than
    ``pack_length`` gets a row of its own. Rows hold their samples in batch order, and rows come in order of their
    first sample, so the result depends on the lengths alone.
    """
    if pack_length < 1:
        raise ValueError(f"pack_length must be a positive number of tokens, got {pack_length}")
    if not lengths:
        return []
    count = min(len(lengths), max(1, math.ceil(sum(lengths) / pack_length)))
    while count < len(lengths) and width(lengths, balance(lengths, count)) > pack_length:
        count += 1
    layouts = [balance(lengths, n) for n in range(count, min(len(lengths), count + extra_rows) + 1)]
    return min(layouts, key=lambda rows: (width(lengths, rows) * len(rows), len(rows)))


def width(lengths: list[int], rows: list[list[int]]) -> int:
    """Tokens in the longest row: the width every row is padded to."""
    return max(sum(lengths[i] for i in row) for row in rows)


def balance(lengths: list[int], count: int) -> list[list[int]]:
    """Spreads samples over ``count`` rows so the longest row (the batch's width) is short: longest sample first,
    each into the row with the fewest tokens so far (LPT), then :func:`even_out`. Row order and the order within
    rows depend on the lengths alone."""
    count = min(count, len(lengths))
    loads = [(0, row) for row in range(count)]
    rows: list[list[int]] = [[] for _ in range(count)]
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        load, row = heapq.heappop(loads)
        rows[row].append(index)
        heapq.heappush(loads, (load + lengths[index], row))
    even_out(lengths, rows)
    return sorted((sorted(row) for row in rows), key=lambda row: row[0])


def even_out(lengths: list[int], rows: list[list[int]], max_rounds: int = 1000) -> None:
    """Moves or swaps samples between the longest and the shortest row, in place, while that narrows the gap.

    LPT leaves the longest row up to one sample longer than the mean, and samples carrying an image's tokens are
    long: 16 samples in 3 rows come out about 10 % over. Each round moves the amount closest to half the gap (one
    sample, or the difference of a swapped pair), which strictly lowers the sum of squared row lengths, so it ends.
    """
    loads = [sum(lengths[i] for i in row) for row in rows]
    for _ in range(max_rounds):
        longest, shortest = loads.index(max(loads)), loads.index(min(loads))
        gap = loads[longest] - loads[shortest]
        moves = [(abs(2 * lengths[a] - gap), a, None) for a in rows[longest] if 0 < lengths[a] < gap]
        swaps = [(abs(2 * (lengths[a] - lengths[b]) - gap), a, b)
                 for a in rows[longest] for b in rows[shortest] if 0 < lengths[a] - lengths[b] < gap]
        if not moves and not swaps:
            return
        _, a, b = min(moves + swaps, key=lambda move: move[0])
        rows[longest].remove(a)
        rows[shortest].append(a)
        shift = lengths[a]
        if b is not None:
            rows[shortest].remove(b)
            rows[longest].append(b)
            shift -= lengths[b]
        loads[longest] -= shift
        loads[shortest] += shift
