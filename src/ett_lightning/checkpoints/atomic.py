"""Checkpoint writes that a kill cannot corrupt, for files and for folders, and what a killed write leaves behind.

A file is written to ``.<name>.tmp-<pid>`` beside its target, flushed, renamed over it, and the directory is synced
so the rename itself survives a power loss (``AtomicCheckpointIO``). A folder (FSDP2's
``save_distributed_checkpoint``) is written whole to ``.<name>.tmp-<pid>`` (``FSDP2Strategy.save_checkpoint``);
then the old folder steps aside to ``.<name>.old-<pid>``, the new one takes its name, and the old one is removed
(:func:`promote_folder`). A kill at any point leaves either the previous complete checkpoint under the target's
name, or (between the two renames) the previous one under its ``.old`` name, which :func:`recover` puts back.

Temporaries of processes that no longer run on this machine are removed by :func:`remove_stale`; a temporary of a
live process (another run writing into the same directory) is left alone.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)$")


def temporary_path(target: Path, pid: int | None = None, kind: str = "tmp") -> Path:
    return target.with_name(f".{target.name}.{kind}-{os.getpid() if pid is None else pid}")


def sync_directory(directory: Path) -> None:
    """Makes the renames in ``directory`` durable (where the platform allows opening a directory)."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:  # some filesystems refuse to sync a directory; the rename is still atomic there
        pass
    finally:
        os.close(descriptor)


def sync_tree(folder: Path) -> None:
    """Flushes every file of ``folder`` and the folder itself to disk."""
    for path in folder.rglob("*"):
        if path.is_file():
            with path.open("rb") as file:
                os.fsync(file.fileno())
    sync_directory(folder)


def promote_folder(staging: Path, target: Path, previous: Path) -> None:
    """``staging`` (complete) becomes ``target``; a folder or file already there is removed once replaced."""
    sync_tree(staging)
    if target.exists():
        os.replace(target, previous)
    os.replace(staging, target)
    sync_directory(target.parent)
    if previous.is_dir():
        shutil.rmtree(previous)
    else:
        previous.unlink(missing_ok=True)


def recover(target: Path) -> bool:
    """Puts back the previous checkpoint a kill between the two renames of :func:`promote_folder` left under its
    ``.old`` name; whether it did."""
    if target.exists():
        return False
    previous = sorted(target.parent.glob(f".{glob_escape(target.name)}.old-*"), key=lambda p: p.stat().st_mtime)
    if not previous:
        return False
    os.replace(previous[-1], target)
    sync_directory(target.parent)
    return True


def remove_stale(directory: Path) -> list[Path]:
    """Removes the temporaries of dead processes in ``directory`` (after :func:`recover` of their targets); returns
    them."""
    removed = []
    if not directory.is_dir():
        return removed
    for path in directory.iterdir():
        match = TEMPORARY.match(path.name)
        if match is None or process_alive(int(match["pid"])):
            continue
        recover(path.with_name(match["name"]))
        if not path.exists():  # it was the previous checkpoint, now back under its name
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # OverflowError: a number no process can have
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)
