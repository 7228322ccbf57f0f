"""Running ``lightning`` as users do, in a subprocess with a hard timeout that also ends the DDP workers it spawned."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LIGHTNING = str(Path(sys.executable).with_name("lightning"))


def run_lightning(args: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    """``lightning *args`` in ``cwd``; a run that outlives ``timeout`` (a hang) is killed with all its processes
    and fails the test with the end of its output, instead of hanging the suite."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    process = subprocess.Popen([LIGHTNING, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"lightning {' '.join(args[:3])} did not finish in {timeout:.0f} s (hang?); output ends:\n"
                    f"{output[-4000:]}")
    assert process.returncode == 0, output[-4000:]
    return subprocess.CompletedProcess(process.args, process.returncode, output, "")


def two_processes() -> list[str]:
    return ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp"]
