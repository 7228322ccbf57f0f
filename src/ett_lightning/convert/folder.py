"""An image folder and a captions file -> caption shards, as img2dataset writes them (image, ``txt``, ``json``).

The captions file is JSON lines (``{"file_name": "a.jpg", "caption": "..."}``), CSV or TSV with a header row.
The image column is the first of ``file_name``, ``image``, ``filename``, ``path`` present, the caption column the
first of ``caption``, ``text``, ``txt``, unless named.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from ett_lightning.convert.entries import progress, read_json_entries, read_utf8
from ett_lightning.convert.images import image_member
from ett_lightning.convert.shard_output import ShardOutput
from ett_lightning.data.skips import SkipSample

IMAGE_COLUMNS = ("file_name", "image", "filename", "path")
CAPTION_COLUMNS = ("caption", "text", "txt")


def convert_folder(images: str | Path, captions_file: str | Path, output: ShardOutput,
                   image_column: str | None = None, caption_column: str | None = None) -> dict[str, Any]:
    """One sample per captions row, in file order; rows with no caption, or a missing or undecodable image, are
    skipped and counted. Returns the summary."""
    rows = read_rows(Path(captions_file))
    columns = {key for row in rows if isinstance(row, dict) for key in row if isinstance(key, str)}
    image_key = pick_column(image_column, IMAGE_COLUMNS, columns, captions_file, "--image-column")
    caption_key = pick_column(caption_column, CAPTION_COLUMNS, columns, captions_file, "--caption-column")
    root = Path(images)
    for index, row in enumerate(progress(rows, "folder")):
        try:
            output.write(index, sample(row, root, image_key, caption_key))
        except SkipSample as reason:
            output.skip(reason, f"row {index}")
    return output.close()


def read_rows(path: Path) -> list[Any]:
    if path.suffix in (".jsonl", ".json"):
        return read_json_entries(path)
    if path.suffix not in (".csv", ".tsv"):
        raise ValueError(f"{path}: captions must be .jsonl, .csv or .tsv")
    text = read_utf8(path)
    return list(csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if path.suffix == ".tsv" else ","))


def pick_column(named: str | None, candidates: tuple[str, ...], columns: set[str], source: str | Path,
                flag: str) -> str:
    if named is not None:
        if named not in columns:
            raise ValueError(f"{source} has no column {named!r}; its columns are {sorted(columns)}")
        return named
    found = next((name for name in candidates if name in columns), None)
    if found is None:
        raise ValueError(f"{source} has none of the columns {list(candidates)} (its columns are {sorted(columns)}); "
                         f"name one with {flag}")
    return found


def sample(row: Any, root: Path, image_key: str, caption_key: str) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise SkipSample("captions row is not an object")
    caption = row.get(caption_key)
    if not isinstance(caption, str) or not caption.strip():
        raise SkipSample("row without a caption")
    if not isinstance(row.get(image_key), str) or not row[image_key]:
        raise SkipSample("row without an image file name")
    ext, data = image_member(root / row[image_key], root)
    return {ext: data, "txt": caption.strip(), "json": {"file_name": row[image_key], "caption": caption.strip()}}
