"""Running ``lightning`` as users do, in a subprocess with a hard timeout that also ends the DDP workers it spawned."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIGHTNING = str(Path(sys.executable).with_name("lightning"))


def run_lightning(args: list[str], cwd: Path, timeout: float = 240, check: bool = True) -> subprocess.CompletedProcess:
    """``lightning *args`` in ``cwd``; a run that outlives ``timeout`` (a hang) is ended with all its processes
    and fails the test with the end of its output, instead of hanging the suite. Before they die, every Python
    process of the run (ranks and loader workers) prints where each of its threads is waiting. ``check``: a run
    that exits with an error fails the test (else its return code and whole output are returned)."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "PYTHONFAULTHANDLER": "1", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([LIGHTNING, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        output = end_with_stack_dumps(process)
        (cwd / "hung_run_output.txt").write_text(output)
        pytest.fail(f"lightning {' '.join(args[:3])} did not finish in {timeout:.0f} s (hang?); the whole output is "
                    f"in {cwd / 'hung_run_output.txt'}. Where each process's main thread was:\n"
                    f"{main_thread_stacks(output)[-12000:]}")
    assert process.returncode == 0 or not check, output[-4000:]
    completed = subprocess.CompletedProcess(process.args, process.returncode, output, "")
    completed.process_group = process.pid  # the run's session: its ranks, loader workers and their commands
    return completed


def end_with_stack_dumps(process: subprocess.Popen, grace: float = 20) -> str:
    """SIGABRT to each process of the run's group in turn, half a second apart so their stacks do not interleave
    (faulthandler, on through PYTHONFAULTHANDLER, prints every thread's stack as a process aborts), then SIGKILL to
    what still holds the output pipe after ``grace`` seconds; returns all the output."""
    for pid in group_members(process.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGABRT)
        time.sleep(0.5)
    try:
        return process.communicate(timeout=grace)[0]
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        return process.communicate()[0]


def group_members(group: int) -> list[int]:
    """The live processes of a process group, oldest (lowest pid) first: the launching rank, then the others."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[2]) == group:
                members.append(int(stat.parent.name))
    return sorted(members)


def main_thread_stacks(output: str) -> str:
    """The ``Current thread`` blocks of faulthandler dumps: where each aborted process's main thread waited."""
    return "\n".join(re.findall(r"^Current thread .*?(?:\n\n|\Z)", output, flags=re.M | re.S)) or output


def two_processes() -> list[str]:
    return ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp"]
