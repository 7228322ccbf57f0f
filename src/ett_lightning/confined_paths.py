"""Paths read from untrusted data files, kept inside the folder they were meant for."""

from __future__ import annotations

from pathlib import Path


def resolved_inside(path: Path, root: Path) -> Path | None:
    """``path`` resolved (``..`` and links followed), or None when that leaves ``root``. Paths read from data files
    (a converter's source, ``ett ask``'s questions) are untrusted: one naming ``../../home/me/.ssh/id_rsa.png`` or a
    link pointing out of the folder must not make the package read another file of the machine. A path that
    names no file at all (a NUL byte, a lone surrogate) is None too."""
    try:
        resolved = path.resolve()
    except ValueError:  # also UnicodeEncodeError
        return None
    return resolved if resolved.is_relative_to(root.resolve()) else None
