"""Reading a converter's source entries: JSON lists or JSON lines, with a progress bar."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm


def read_json_entries(path: str | Path) -> list[Any]:
    """The entries of a JSON list (``[{...}, ...]``) or of a JSON-lines file (``.jsonl``, one object a line).

    A ``.jsonl`` line that is not JSON becomes None, which the converter skips and counts as a bad entry; a JSON
    file that does not parse, or is not a list, is an error naming the file: there is nothing to convert.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix == ".jsonl":
        return [parse_line(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); expected a list of entries") from err
    if not isinstance(entries, list):
        raise ValueError(f"{path} holds a JSON {type(entries).__name__}; expected a list of entries")
    return entries


def parse_line(line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


def progress(entries: Iterable[Any], description: str, total: int | None = None) -> Iterator[Any]:
    """tqdm over the entries; shown on a terminal, silent in logs and CI (``disable=None``)."""
    return iter(tqdm(entries, desc=description, total=total, unit=" entries", disable=None))
