"""Checkpoint writes killed midway: a folder killed while it is written or between its two renames, and a file killed
mid-write, leave a checkpoint that loads (the previous one), and what the killed writer left is put back or removed.

Each kill is a real SIGKILL of a process writing a checkpoint folder as FSDP2Strategy does (torch.distributed.checkpoint
shards, then Lightning's meta.pt, then the renames); the 2-process FSDP2 runs of tests/distributed save their folders
through FSDP2Strategy.save_checkpoint itself and resume from them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from ett_lightning.checkpoints.atomic import recover, remove_stale, temporary_path
from ett_lightning.checkpoints.files import load_state_dict_file

WRITE_FOLDERS = textwrap.dedent("""
    import os, signal, sys, warnings
    from pathlib import Path
    import torch, torch.distributed.checkpoint as dcp
    from ett_lightning.checkpoints import atomic

    target, kill_at = Path(sys.argv[1]), sys.argv[2]
    warnings.filterwarnings("ignore")
    replace = os.replace
    def renaming(source, destination):
        replace(source, destination)
        if killing and kill_at == "between_renames" and Path(destination).name.startswith("."):
            os.kill(os.getpid(), signal.SIGKILL)
    os.replace = renaming
    for step in (1, 2, 3):  # steps 1 and 2 complete; step 3 is killed at kill_at
        killing = step == 3
        weights = {"w": torch.full((64, 64), float(step)), "b": torch.full((64,), float(step))}
        staging = atomic.temporary_path(target)
        dcp.save({"state_dict": weights}, storage_writer=dcp.FileSystemWriter(staging), no_dist=True)
        if killing and kill_at == "before_meta":  # shards and index written, Lightning's meta.pt not yet
            os.kill(os.getpid(), signal.SIGKILL)
        torch.save({"global_step": step}, staging / "meta.pt")
        atomic.promote_folder(staging, target, atomic.temporary_path(target, kind="old"))
        assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"], "a temporary was left"
""")


def saved_step(folder: Path) -> float:
    return float(load_state_dict_file(folder)["w"][0, 0])


@pytest.mark.parametrize("kill_at", ["before_meta", "between_renames"])
def test_a_folder_killed_while_it_replaces_the_previous_one_leaves_the_previous_one(tmp_path, kill_at):
    target = tmp_path / "checkpoints" / "last.ckpt"
    target.parent.mkdir()
    result = subprocess.run([sys.executable, "-c", WRITE_FOLDERS, str(target), kill_at], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]  # steps 1 and 2 replaced whole, then killed
    left = sorted(p.name for p in target.parent.iterdir())
    if kill_at == "between_renames":
        assert not target.exists() and any(".old-" in name for name in left)  # the window recover() closes
    assert recover(target) == (kill_at == "between_renames")
    removed = remove_stale(target.parent)  # the dead writer's staging folder
    assert [p.name for p in removed] == [name for name in left if ".tmp-" in name]
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]
    assert saved_step(target) == 2 and torch.load(target / "meta.pt")["global_step"] == 2


def test_temporaries_of_live_processes_are_left_alone(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    ours = temporary_path(tmp_path / "last.ckpt")
    theirs = temporary_path(tmp_path / "last.ckpt", pid=int(dead.stdout))
    ours.write_bytes(b"being written")
    theirs.write_bytes(b"left by a killed writer")
    (tmp_path / "notes.tmp-12").write_text("not a checkpoint temporary")
    assert remove_stale(tmp_path) == [theirs]
    assert ours.exists() and (tmp_path / "notes.tmp-12").exists()
    assert os.getpid() == int(ours.name.rsplit("-", 1)[1])
