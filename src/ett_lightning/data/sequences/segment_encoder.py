"""Tokenizing chat-templated text stretch by stretch between its special tokens, each distinct stretch once.

Templated conversations repeat most of their text: the template's headers, the system prompt, common questions,
each between special tokens (``<|im_start|>user\\n ... <|im_end|>``). A fast tokenizer matches special tokens
first and tokenizes every stretch between them on its own, so tokenizing the stretches separately, with a memo,
gives the ids and offsets of tokenizing the whole text, and a conversation costs about what its new text costs.

That holds when the special tokens strip no whitespace and match alone (``lstrip``, ``rstrip``,
``single_word`` and ``normalized`` off, no longer added token containing them) and no pre-tokenizer or normalizer
treats the text's first stretch differently (Metaspace's ``prepend_scheme="first"``): tokens that fail the test
are not split at, and such a pre-tokenizer turns splitting off. The first texts are also tokenized whole and
compared; a difference turns splitting off for good, with a warning.
"""

from __future__ import annotations

import json
import re
import warnings

from tokenizers import Tokenizer

Encoded = tuple[list[int], list[int]]


class SegmentEncoder:
    """``encode(text)`` -> (token ids, character offset each token starts at), as ``backend.encode(text,
    add_special_tokens=False)`` gives them."""

    verify_first = 64
    memo_size = 50_000

    def __init__(self, backend: Tokenizer) -> None:
        self.backend = backend
        self.special = independent_special_tokens(backend)
        contents = sorted(self.special, key=len, reverse=True)
        self.splitter = re.compile("(" + "|".join(map(re.escape, contents)) + ")") if contents else None
        self.memo: dict[str, Encoded] = {}
        self.unverified = self.verify_first

    def encode(self, text: str) -> Encoded:
        if self.splitter is None:
            return self.whole(text)
        encoded = self.by_segments(text)
        if self.unverified:
            self.unverified -= 1
            if encoded != self.whole(text):
                warnings.warn("this tokenizer does not tokenize the text between its special tokens independently; "
                              "conversations are tokenized whole from now on", stacklevel=2)
                self.splitter = None
                return self.whole(text)
        return encoded

    def whole(self, text: str) -> Encoded:
        encoding = self.backend.encode(text, add_special_tokens=False)
        return encoding.ids, [start for start, _ in encoding.offsets]

    def by_segments(self, text: str) -> Encoded:
        ids: list[int] = []
        starts: list[int] = []
        position = 0
        for index, part in enumerate(self.splitter.split(text)):
            if index % 2:
                ids.append(self.special[part])
                starts.append(position)
            elif part:
                part_ids, part_starts = self.segment(part)
                ids += part_ids
                starts += [position + start for start in part_starts]
            position += len(part)
        return ids, starts

    def segment(self, part: str) -> Encoded:
        if part not in self.memo:
            if len(self.memo) >= self.memo_size:
                self.memo.clear()
            self.memo[part] = self.whole(part)
        return self.memo[part]


def independent_special_tokens(backend: Tokenizer) -> dict[str, int]:
    """Content -> id of the special tokens it is exact to split at (see the module docstring); none when a
    pre-tokenizer or normalizer treats the first stretch of a text differently."""
    config = json.loads(backend.to_str())
    if '"prepend_scheme": "first"' in json.dumps([config.get("pre_tokenizer"), config.get("normalizer")]):
        return {}
    added = backend.get_added_tokens_decoder()
    contents = [token.content for token in added.values()]
    return {token.content: token_id for token_id, token in added.items()
            if token.special and not (token.lstrip or token.rstrip or token.single_word or token.normalized)
            and not any(token.content in other and token.content != other for other in contents)}
