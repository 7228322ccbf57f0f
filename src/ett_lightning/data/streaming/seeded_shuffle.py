"""The training stream's shuffle buffer, seeded like the shard stream instead of by the clock."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import webdataset as wds

from ett_lightning.data.streaming.shards import slot_generator

SALT = 7_919
"""Keeps this generator's sequence apart from the shard stream's (same seed tuple otherwise)."""


class SeededShuffle:
    """webdataset's shuffle buffer (``bufsize`` samples, ``initial`` before the first is given out) with its
    generator seeded by (seed, start_step, rank, worker, pass), as :class:`ResampledShardStream` is.

    ``wds.shuffle`` without a generator seeds one from the process id and the time, so no two runs of the same
    recipe see their samples in the same order, and a seed does not reproduce.
    """

    def __init__(self, bufsize: int, initial: int, seed: int = 0, start_step: int = 0) -> None:
        self.bufsize, self.initial = bufsize, initial
        self.seed, self.start_step = seed, start_step
        self.passes = 0

    def __call__(self, source: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        rng = slot_generator(self.seed, self.start_step, self.passes, SALT)
        self.passes += 1
        return wds.shuffle(self.bufsize, self.initial, rng=rng)(source)
