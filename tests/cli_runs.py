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
    and fails the test, instead of hanging the suite. Before they die, every process of the run (ranks, loader
    workers) is described and prints where its threads wait; the failure lists each process's innermost frames.
    ``check``: a run that exits with an error fails the test (else its return code and whole output are returned)."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "PYTHONFAULTHANDLER": "1", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([LIGHTNING, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        members = [describe_process(pid) for pid in group_members(process.pid)]
        output = end_with_stack_dumps(process, [pid for pid, _ in members])
        (cwd / "hung_run_output.txt").write_text(output)
        pytest.fail(f"lightning {' '.join(args[:3])} did not finish in {timeout:.0f} s (hang?); the whole output is "
                    f"in {cwd / 'hung_run_output.txt'}. Its processes, oldest first, each with the innermost frames "
                    f"of its main thread:\n{hang_report(members, output)}\n"
                    f"--- what the run printed last before the aborts:\n"
                    f"{output.split('Fatal Python error')[0][-3000:]}")
    assert process.returncode == 0 or not check, output[-4000:]
    completed = subprocess.CompletedProcess(process.args, process.returncode, output, "")
    completed.process_group = process.pid  # the run's session: its ranks, loader workers and their commands
    return completed


def end_with_stack_dumps(process: subprocess.Popen, pids: list[int], grace: float = 20) -> str:
    """SIGABRT to each of ``pids`` in turn, half a second apart so their stacks do not interleave (faulthandler, on
    through PYTHONFAULTHANDLER, prints every thread's stack as a process aborts), then SIGKILL to what still holds
    the output pipe after ``grace`` seconds; returns all the output."""
    for pid in pids:
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


def describe_process(pid: int) -> tuple[int, str]:
    """``pid``, and a line naming its parent, thread count, kernel wait channel and command (a loader worker has its
    rank's command and the rank as parent)."""
    proc = Path(f"/proc/{pid}")
    try:
        fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        wait = (proc / "wchan").read_text() or "running"
    except OSError:
        return pid, f"pid {pid}: gone"
    return pid, (f"pid {pid}, parent {fields[1]}, state {fields[0]}, {fields[17]} threads, waits in {wait}: "
                 f"{command[:100]}")


def hang_report(members: list[tuple[int, str]], output: str, frames: int = 8) -> str:
    """Each process's line, with the innermost ``frames`` frames of the main thread its abort printed. Dumps come
    in the order the processes were aborted; when their count differs from the processes', they are listed apart."""
    dumps = [innermost(dump, frames) for dump in output.split("Fatal Python error: Aborted")[1:]]
    if len(dumps) == len(members):
        return "\n".join(f"{line}\n{dump}" for (_, line), dump in zip(members, dumps))
    return "\n".join([line for _, line in members] + [f"{len(dumps)} stack dumps:", *dumps])


def innermost(dump: str, frames: int) -> str:
    """The first ``frames`` lines (innermost first) of a faulthandler dump's ``Current thread`` block."""
    block = re.search(r"^Current thread .*?(?:\n\n|\Z)", dump, flags=re.M | re.S)
    lines = block.group(0).splitlines()[1:1 + frames] if block else ["(no main-thread stack printed)"]
    return "\n".join(lines)


def two_processes() -> list[str]:
    return ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp"]
