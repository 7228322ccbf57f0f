"""Validation split evenly across DDP ranks and loader workers, so every rank runs the same number of batches.

Under DDP every validation batch goes through the wrapped model (a buffer broadcast per forward) and every
logged value is reduced across ranks at the end of the epoch. A rank that runs fewer batches than another, or
none, leaves the others waiting in a collective: the run hangs. Splitting by shard cannot prevent that (one
validation shard and eight GPUs is common, and shards differ in length), so the split here is by sample.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
from torch.utils.data import get_worker_info

from ett_lightning.data.sequences.sequence_builder import SequenceBuilder


class EvenSplit:
    """webdataset stage: every (rank, worker) slot reads the whole ordered validation stream, decodes the samples
    whose position ``i`` has ``i % slots == slot``, and then adds padding samples until it has
    ``ceil(total / slots)``: the same count on every slot, so the same number of batches on every rank. A single
    process (``world_size`` 1) needs no padding and gets none.

    Sample ``i`` is decoded by exactly one slot, so the real samples are those of a single-process pass and
    metrics summed over ranks equal the single-process ones. A sample that fails to decode is skipped (and counted
    by ``decode``) and replaced by padding. Padding rows carry ``padding=True`` (a blank image and a one-token
    caption); evaluation drops them (:meth:`ETTBatch.without_padding`). Reading the whole stream on every slot costs
    ``slots`` times the validation set's bytes of I/O, but not of decoding, which dominates.
    """

    def __init__(self, decode: Callable[[dict[str, Any]], dict[str, Any] | None], builder: SequenceBuilder,
                 image_size: int, rank: int = 0, world_size: int = 1) -> None:
        self.decode = decode
        self.builder = builder
        self.image_size = image_size
        self.rank = rank
        self.world_size = world_size

    def slot(self) -> tuple[int, int]:
        """(this slot's index, number of slots) over ranks x loader workers."""
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        return self.rank * workers + worker, self.world_size * workers

    def __call__(self, samples: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        slot, slots = self.slot()
        total = emitted = 0
        for index, sample in enumerate(samples):
            total = index + 1
            if index % slots != slot:
                continue
            decoded = self.decode(sample)
            if decoded is not None:
                emitted += 1
                yield decoded
        if self.world_size > 1:
            for _ in range(math.ceil(total / slots) - emitted):
                yield self.padding_sample()

    def padding_sample(self) -> dict[str, Any]:
        return {"image": np.zeros((self.image_size, self.image_size, 3), dtype=np.uint8),
                "sequence": self.builder.build("caption", {}, "-"), "answers": ["-"], "answer_type": "",
                "task": "caption", "key": "padding", "padding": True}
