"""Right-padding collation of decoded samples into an :class:`ETTBatch`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence

from ett_lightning.data.batch import ETTBatch
from ett_lightning.data.sequence import IGNORE_INDEX
from ett_lightning.data.skips import SkipCounter


class Collator:
    """Stacks images, right-pads token sequences, and stamps the batch with the worker's recent skip count."""

    def __init__(self, pad_id: int, skips: SkipCounter) -> None:
        self.pad_id = pad_id
        self.skips = skips

    def __call__(self, samples: Sequence[dict[str, Any]]) -> ETTBatch:
        sequences = [s["sequence"] for s in samples]
        input_ids = pad_sequence([q.input_ids for q in sequences], batch_first=True, padding_value=self.pad_id)
        lengths = torch.tensor([len(q.input_ids) for q in sequences])
        attention_mask = (torch.arange(input_ids.shape[1])[None] < lengths[:, None]).long()
        return ETTBatch(
            images=torch.stack([s["image"] for s in samples]),
            input_ids=input_ids,
            attention_mask=attention_mask,
            labels=pad_sequence([q.labels for q in sequences], batch_first=True, padding_value=IGNORE_INDEX),
            image_slots=pad_sequence([q.image_slots for q in sequences], batch_first=True, padding_value=False),
            target_starts=torch.tensor([q.target_start for q in sequences]),
            answers=[s["answers"] for s in samples],
            tasks=[s["task"] for s in samples],
            keys=[s["key"] for s in samples],
            skipped=self.skips.take(),
        )
