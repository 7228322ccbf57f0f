"""A chat template's text around each turn's content, for one sequence of roles, rendered once.

Finding where each answer starts and ends takes the template rendered up to every assistant turn, with and
without the generation prompt: two more renders per answer. Where the template copies contents verbatim those
boundaries depend on the roles alone, so they are found once per role sequence, on a conversation whose contents
are unique markers, and a real conversation's text and answer spans follow by putting its contents in. The
caller still renders each conversation once and compares: a template that edits contents (trims them, rewrites
reasoning blocks) shows as a difference there, and that conversation's answers are found by rendering it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

Render = Callable[..., str]
Boundary = tuple[int, int]
"""(piece, offset): a position in the filled text, ``offset`` characters into the template piece ``piece``."""

MARKER = "\ue000{}\ue001"
"""A content no conversation holds: private-use code points around the turn's index."""


@dataclass(frozen=True)
class ChatSkeleton:
    """``pieces``: the template's text before, between and after the contents (one more than the turns);
    ``answers``: per assistant turn, where its answer starts (after the generation prompt) and where it ends."""

    pieces: tuple[str, ...]
    answers: tuple[tuple[Boundary, Boundary], ...]

    @classmethod
    def of(cls, render: Render, roles: Sequence[str], eos: str | None) -> ChatSkeleton | None:
        """The skeleton of ``render`` (``render(messages, generation_prompt=False) -> str``) for ``roles``;
        None when the template does not show each content exactly once or its answers cannot be found
        (:func:`answer_spans`)."""
        messages = [{"role": role, "content": MARKER.format(index)} for index, role in enumerate(roles)]
        text = render(messages)
        pieces, piece_starts, position = [], [], 0
        for message in messages:
            at = text.find(message["content"], position)
            if at < 0 or text.count(message["content"]) != 1:
                return None
            pieces.append(text[position:at])
            piece_starts.append(position)
            position = at + len(message["content"])
        pieces.append(text[position:])
        piece_starts.append(position)
        spans = answer_spans(render, messages, text, eos)
        if spans is None:
            return None
        answers = []
        for first_char, end_char in spans:
            first, end = locate(first_char, pieces, piece_starts), locate(end_char, pieces, piece_starts)
            if first is None or end is None:
                return None
            answers.append((first, end))
        return cls(tuple(pieces), tuple(answers))

    def fill(self, contents: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
        """The text with ``contents`` in place, and each answer's (first, end) character offsets in it."""
        parts, piece_starts, position = [], [], 0
        for index, piece in enumerate(self.pieces):
            piece_starts.append(position)
            parts.append(piece)
            position += len(piece)
            if index < len(contents):
                parts.append(contents[index])
                position += len(contents[index])
        spans = [(piece_starts[first[0]] + first[1], piece_starts[end[0]] + end[1]) for first, end in self.answers]
        return "".join(parts), spans


def answer_spans(render: Render, messages: Sequence[dict[str, str]], text: str, eos: str | None
                 ) -> list[tuple[int, int]] | None:
    """(first, end) character offsets in ``text``, the full render of ``messages``, of each assistant turn.

    An answer is what follows the generation prompt, up to the end of the turn. Where the template renders a turn
    differently once later turns follow (Qwen3 and other reasoning templates keep a ``<think>`` block only after
    the last user query, and their generation prompt may open one), the answer is the turn as the full render shows
    it: from where that render leaves the generation prompt (after the role header) through the turn's
    end-of-turn token ``eos``. None when neither finds it.
    """
    spans: list[tuple[int, int]] = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render(messages[:index], generation_prompt=True)
        turn = text if index == len(messages) - 1 else render(messages[: index + 1])
        if text.startswith(prompt) and text.startswith(turn):
            spans.append((len(prompt), len(turn)))
            continue
        first = len(os.path.commonprefix([prompt, text]))
        before = messages[index - 1]["content"] if index else ""
        end = text.find(eos, first) if eos else -1
        if end < 0 or (spans and first < spans[-1][1]) or text.rfind(before, 0, first) < 0:
            return None
        spans.append((first, end + len(eos)))
    return spans


def locate(position: int, pieces: Sequence[str], piece_starts: Sequence[int]) -> Boundary | None:
    """The (piece, offset) of a position of the marker-filled text; None inside a marker."""
    for index, (piece, start) in enumerate(zip(pieces, piece_starts)):
        if start <= position <= start + len(piece):
            return index, position - start
    return None
