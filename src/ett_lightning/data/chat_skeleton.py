"""A chat template's text around each turn's content, for one sequence of roles, rendered once.

Finding where each answer starts and ends takes the template rendered up to every assistant turn, with and
without the generation prompt: two more renders per answer. Where the template copies contents verbatim those
boundaries depend on the roles alone, so they are found once per role sequence, on a conversation whose contents
are unique markers, and a real conversation's text and answer spans follow by putting its contents in. The
caller still renders each conversation once and compares: a template that edits contents (trims them, rewrites
reasoning blocks) shows as a difference there.
"""

from __future__ import annotations

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
    def of(cls, render: Render, roles: Sequence[str]) -> ChatSkeleton | None:
        """The skeleton of ``render`` (``render(messages, generation_prompt=False) -> str``) for ``roles``;
        None when the template does not show each content exactly once or renders earlier turns differently once
        later ones follow."""
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
        answers = []
        for index, role in enumerate(roles):
            if role != "assistant":
                continue
            prompt = render(messages[:index], generation_prompt=True)
            turn = text if index == len(roles) - 1 else render(messages[: index + 1])
            if not (text.startswith(prompt) and text.startswith(turn)):
                return None
            first, end = locate(len(prompt), pieces, piece_starts), locate(len(turn), pieces, piece_starts)
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


def locate(position: int, pieces: Sequence[str], piece_starts: Sequence[int]) -> Boundary | None:
    """The (piece, offset) of a position of the marker-filled text; None inside a marker."""
    for index, (piece, start) in enumerate(zip(pieces, piece_starts)):
        if start <= position <= start + len(piece):
            return index, position - start
    return None
