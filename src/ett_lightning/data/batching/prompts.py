"""Text prompts for image generation: ``lightning predict`` with ``data.predict_prompts``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ett_lightning.data.sequences.sequence_builder import SequenceBuilder


@dataclass
class PromptBatch:
    """``input_ids`` / ``attention_mask`` [B, L], left padded so every row ends with ``<image_begin>`` at the same
    position, where generation continues. ``prompts`` are the texts, ``keys`` their line numbers."""

    input_ids: Tensor
    attention_mask: Tensor
    prompts: list[str]
    keys: list[str]

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def read_prompts(source: str | list[str]) -> list[str]:
    """A list of prompts as given, or the non-empty lines of a text file."""
    if isinstance(source, str):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"predict_prompts file not found: {source} (one prompt per line)")
        prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    else:
        prompts = [str(p).strip() for p in source]
    prompts = [p for p in prompts if p]
    if not prompts:
        raise ValueError(f"predict_prompts {source!r} holds no prompt")
    return prompts


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Token rows -> (ids, attention mask) [B, max len], padded on the left."""
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, width - len(row):] = 1
    return input_ids, attention_mask


class PromptCollator:
    """(line number, prompt) pairs -> :class:`PromptBatch` through the builder's generation prefix."""

    def __init__(self, builder: SequenceBuilder) -> None:
        self.builder = builder

    def __call__(self, items: list[tuple[int, str]]) -> PromptBatch:
        rows = [self.builder.generation_prefix(prompt) for _, prompt in items]
        input_ids, attention_mask = left_pad(rows, self.builder.tokenizer.pad_token_id)
        return PromptBatch(input_ids, attention_mask, [p for _, p in items], [str(i) for i, _ in items])
