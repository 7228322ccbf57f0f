"""Running ``lightning`` as users do, in a subprocess with a hard timeout that also ends the DDP workers it spawned."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
LIGHTNING = str(Path(sys.executable).with_name("lightning"))
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))


def run_lightning(args: list[str], cwd: Path, timeout: float = 240, check: bool = True) -> subprocess.CompletedProcess:
    """``lightning *args`` in ``cwd``; a run that outlives ``timeout`` (a hang) is ended with all its processes
    and fails the test, instead of hanging the suite. Before they die, every process of the run (ranks, loader
    workers) is described and prints where its threads wait; the failure lists each process's innermost frames.
    ``check``: a run that exits with an error fails the test (else its return code and whole output are returned)."""
    return run_together([[LIGHTNING, *args]], cwd, timeout, check)[0]


def run_torchrun(args: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=2 -m ett_lightning *args``: the 2 processes of one node, started
    together (Lightning's own launcher starts the second once the first has set up, ~5 s later on 2 cores). Hangs
    and errors fail the test as in :func:`run_lightning`."""
    command = [TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "ett_lightning", *args]
    return run_together([command], cwd, timeout, check=True)[0]


def run_torchrun_nodes(args: list[str], cwd: Path, nodes: int = 2, timeout: float = 240) -> list[str]:
    """``torchrun -m ett_lightning *args`` as ``nodes`` simulated nodes of one process each on localhost, started
    together (as a cluster's scheduler starts one torchrun per node); returns each node's output. Hangs and errors
    fail the test as in :func:`run_lightning`."""
    rendezvous = [TORCHRUN, f"--nnodes={nodes}", "--nproc_per_node=1",
                  "--master_addr=127.0.0.1", f"--master_port={free_port()}"]
    commands = [[*rendezvous, f"--node_rank={node}", "-m", "ett_lightning", *args]
                for node in range(nodes)]
    return [run.stdout for run in run_together(commands, cwd, timeout, check=True)]


def run_together(commands: list[list[str]], cwd: Path, timeout: float,
                 check: bool) -> list[subprocess.CompletedProcess]:
    """Runs ``commands`` at once, each in its own session, until all have ended or ``timeout`` seconds have passed.
    With ``check``, one that fails ends the others (which would wait for it in a collective) and fails the test."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "PYTHONFAULTHANDLER": "1", "PYTHONUNBUFFERED": "1"}
    logs = [tempfile.TemporaryFile("w+") for _ in commands]
    processes = [subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
                                  start_new_session=True) for command, log in zip(commands, logs)]
    deadline = time.monotonic() + timeout
    ended: dict[int, float] = {}
    while None in [process.poll() for process in processes]:
        ended.update({id(p): time.time() for p in processes if p.returncode is not None and id(p) not in ended})
        failed = check and any(process.returncode not in (None, 0) for process in processes)
        if failed or time.monotonic() > deadline:
            running = [process for process in processes if process.poll() is None]
            if failed:
                for process in running:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
                break
            fail_hung(running, [logs[processes.index(process)] for process in running], cwd, timeout)
        time.sleep(0.2)
    runs = []
    for process, output in zip(processes, map(read_all, logs)):
        assert process.returncode == 0 or not check, output[-4000:]
        completed = subprocess.CompletedProcess(process.args, process.returncode, output, "")
        completed.process_group = process.pid  # the run's session: its ranks, loader workers and their commands
        completed.ended = ended.get(id(process), time.time())  # when it was first seen ended (0.2 s polls)
        runs.append(completed)
    return runs


def read_all(log: IO[str]) -> str:
    log.seek(0)
    return log.read()


def fail_hung(processes: list[subprocess.Popen], logs: list[IO[str]], cwd: Path, timeout: float) -> None:
    """Describes, stack-dumps and ends every process of the sessions of ``processes`` that outlived ``timeout``, and
    fails the test with where each one waited."""
    groups = [[describe_process(pid) for pid in group_members(process.pid)] for process in processes]
    for process, group in zip(processes, groups):
        end_with_stack_dumps(process, [pid for pid, _ in group])
    output = "".join(map(read_all, logs))
    members = [member for group in groups for member in group]
    (cwd / "hung_run_output.txt").write_text(output)
    name = " ".join(Path(part).name for part in processes[0].args[:4])
    pytest.fail(f"{name} did not finish in {timeout:.0f} s (hang?); the whole output is in "
                f"{cwd / 'hung_run_output.txt'}. Its processes, oldest first, each with the innermost frames of its "
                f"main thread:\n{hang_report(members, output)}\n"
                f"--- what the run printed last before the aborts:\n{output.split('Fatal Python error')[0][-3000:]}")


def end_with_stack_dumps(process: subprocess.Popen, pids: list[int], grace: float = 20) -> None:
    """SIGABRT to each of ``pids`` in turn, half a second apart so their stacks do not interleave (faulthandler, on
    through PYTHONFAULTHANDLER, prints every thread's stack as a process aborts), then SIGKILL to the session's
    remaining processes after ``grace`` seconds."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGABRT)
        time.sleep(0.5)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


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
