"""One sample's LLM tokens, as every sequence builder returns them."""

from __future__ import annotations

from dataclasses import dataclass

IGNORE_INDEX = -100


@dataclass
class TokenSequence:
    """Token ids and labels as plain lists (tensors are made once per batch by the collator), with the image's
    ``num_slots`` slots kept as a count: ``text_ids`` / ``text_labels`` hold every other token, and the slots stand
    before ``text_ids[slot_start]``. A slot is the pad id with label -100 (the model overwrites its embedding), so
    building and collating a sample never touches a thousand pad ints per image; ``input_ids`` / ``labels`` give
    the full lists.

    ``slot_start``: first slot's position; ``target_start``: position (in the full sequence) of the first token of
    the text the model answers with (generation feeds everything before it); ``truncated``: text was cut to fit
    ``max_text_tokens``.
    """

    text_ids: list[int]
    text_labels: list[int]
    slot_start: int
    num_slots: int
    target_start: int
    pad_id: int
    truncated: bool = False

    def __len__(self) -> int:
        return len(self.text_ids) + self.num_slots

    @property
    def input_ids(self) -> list[int]:
        return self.with_slots(self.text_ids, self.pad_id)

    @property
    def labels(self) -> list[int]:
        return self.with_slots(self.text_labels, IGNORE_INDEX)

    def with_slots(self, text: list[int], slot_value: int) -> list[int]:
        return text[: self.slot_start] + [slot_value] * self.num_slots + text[self.slot_start:]
