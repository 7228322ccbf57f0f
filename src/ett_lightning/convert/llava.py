"""LLaVA-format instruction data -> conversation shards.

The source is LLaVA's JSON (LLaVA-Instruct, ShareGPT4V, ...): a list of
``{"id": ..., "image": "relative/path.jpg", "conversations": [{"from": "human" | "gpt", "value": ...}]}``.
Each entry becomes a sample holding the image file's bytes and a json with the entry's ``id``, ``image`` and
``conversations`` as they are, which :mod:`~ett_lightning.data.sequences.conversation` reads at training time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ett_lightning.convert.entries import progress, read_json_entries
from ett_lightning.convert.images import image_member
from ett_lightning.convert.shard_output import ShardOutput
from ett_lightning.data.sequences.conversation import read_messages
from ett_lightning.data.skips import SkipSample


def convert_llava(json_file: str | Path, image_root: str | Path, output: ShardOutput) -> dict[str, Any]:
    """Writes one sample per usable entry; skips and counts the rest, never stopping on one. Returns the summary.

    Skipped: entries that are not objects, text-only entries (no ``image``; the ETT stages train on image-text
    pairs), missing or undecodable images, and conversations the training reader would refuse (empty, no
    assistant turn, an unknown role, more than one ``<image>``), each under its reason.
    """
    entries = read_json_entries(json_file)
    root = Path(image_root)
    for index, entry in enumerate(progress(entries, "llava")):
        try:
            output.write(index, sample(entry, root))
        except SkipSample as reason:
            output.skip(reason, f"entry {index}")
    return output.close()


def sample(entry: Any, root: Path) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise SkipSample("entry is not a JSON object")
    if "conversations" not in entry:
        raise SkipSample("entry without conversations")
    read_messages(entry)
    if not entry.get("image"):
        raise SkipSample("text-only entry (no image)")
    if not isinstance(entry["image"], str):
        raise SkipSample("image is not a single path (one image per sample)")
    ext, data = image_member(root / entry["image"], root)
    meta = {"id": entry.get("id"), "image": entry["image"], "conversations": entry["conversations"]}
    return {ext: data, "json": meta}
