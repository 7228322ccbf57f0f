"""Reading a converter's source entries: JSON lists or JSON lines, with a progress bar."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm


def read_json_entries(path: str | Path) -> list[Any]:
    """The entries of a JSON list (``[{...}, ...]``) or of a JSON-lines file (``.jsonl``, one object a line).

    A ``.jsonl`` line that is not JSON, or not UTF-8, becomes None, which the converter skips and counts as a bad
    entry; a JSON file that does not parse, is not UTF-8 or is not a list, and a JSON-lines file none of whose
    lines is UTF-8, are errors naming the file: there is nothing to convert.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix == ".jsonl":
        lines = [line for line in path.read_bytes().splitlines() if line.strip()]
        texts = [decoded(line) for line in lines]
        if lines and all(text is None for text in texts):
            raise ValueError(f"{path} is not UTF-8 text: convert it (e.g. iconv -f latin1 -t utf-8) and run again")
        return [parse_line(text) if text is not None else None for text in texts]
    try:
        entries = json.loads(read_utf8(path))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); expected a list of entries") from err
    if not isinstance(entries, list):
        raise ValueError(f"{path} holds a JSON {type(entries).__name__}; expected a list of entries")
    return entries


def read_utf8(path: Path) -> str:
    """The file's text; one clear error when it is not UTF-8."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start}): convert it "
                         "(e.g. iconv -f latin1 -t utf-8) and run again") from err


def decoded(line: bytes) -> str | None:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        return None


def parse_line(line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


def progress(entries: Iterable[Any], description: str, total: int | None = None) -> Iterator[Any]:
    """tqdm over the entries; shown on a terminal, silent in logs and CI (``disable=None``)."""
    return iter(tqdm(entries, desc=description, total=total, unit=" entries", disable=None))
