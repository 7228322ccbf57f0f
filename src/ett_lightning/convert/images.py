"""Image files as shard members: decoded once to prove they are readable, then stored as their original bytes."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from ett_lightning.confined_paths import resolved_inside
from ett_lightning.data.skips import SkipSample

STORED_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}


def image_member(path: Path, root: Path) -> tuple[str, bytes]:
    """(extension, bytes) for a shard: JPEG, PNG and WebP files as they are (no re-encoding loss), any other
    format PIL reads (GIF, BMP, TIFF, ...) re-encoded as PNG. Raises :class:`SkipSample` for a file outside
    ``root`` and for a missing or undecodable file."""
    path = resolved_inside(path, root)
    if path is None:
        raise SkipSample("image path outside the image root")
    try:
        data = path.read_bytes()
    except FileNotFoundError as err:
        raise SkipSample("missing image file") from err
    except OSError as err:
        raise SkipSample(f"unreadable image file ({type(err).__name__})") from err
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as err:  # PIL raises many types for broken files
        raise SkipSample(f"undecodable image ({type(err).__name__})") from err
    if image.format in STORED_FORMATS:
        return STORED_FORMATS[image.format], data
    converted = io.BytesIO()
    image.convert("RGB").save(converted, format="PNG")
    return "png", converted.getvalue()

