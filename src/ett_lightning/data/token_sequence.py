"""One sample's LLM tokens, as every sequence builder returns them."""

from __future__ import annotations

from dataclasses import dataclass

IGNORE_INDEX = -100


@dataclass
class Sequence:
    """Token ids and labels as plain lists (tensors are made once per batch by the collator).

    ``slot_start``: first of the image's N slots; ``target_start``: first token of the text the model answers
    with (generation feeds everything before it); ``truncated``: text was cut to fit ``max_text_tokens``.
    """

    input_ids: list[int]
    labels: list[int]
    slot_start: int
    target_start: int
    truncated: bool = False
