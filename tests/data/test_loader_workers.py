"""Loader workers and the ``pipe:`` commands they start ignore stop signals, and still end when their rank exits,
even when it exits with an error and never shuts its loaders down."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from tests.cli_runs import ROOT

LEAVE = textwrap.dedent("""
    import sys
    from pathlib import Path
    from ett_lightning.data import ImageTextDataModule
    from ett_lightning.models import load_text_tokenizer

    def leave(shard, out):
        out = Path(out)
        command = f"pipe:sh -c 'grep SigIgn /proc/$$/status > {out}/pipe.txt; exec cat {shard}'"
        data = ImageTextDataModule(val_shards=command, batch_size=4, num_workers=1, image_size=32, pin_memory=False)
        data.attach(load_text_tokenizer(None), 16)
        batches = iter(data.val_dataloader())
        next(batches)
        worker = batches._workers[0].pid
        (out / "worker.txt").write_text(f"{worker} " + Path(f"/proc/{worker}/status").read_text())
        raise RuntimeError("leaving with the loader's worker still running")
""")
PROCESSES = {  # how the rank was started: as a program, or by multiprocessing (as `ett demo` forks its runs)
    "program": "leave(*sys.argv[1:])",
    "multiprocessing child": textwrap.dedent("""
        import multiprocessing
        child = multiprocessing.get_context("fork").Process(target=leave, args=sys.argv[1:])
        child.start()
        child.join()
        sys.exit(child.exitcode)
    """),
}


def ignored_signals(status: str) -> set[int]:
    """The signal numbers a ``/proc/<pid>/status`` text lists as ignored (``SigIgn``, a hex mask of bit n-1)."""
    mask = int(next(line for line in status.splitlines() if line.startswith("SigIgn:")).split()[1], 16)
    return {number for number in range(1, 65) if mask >> (number - 1) & 1}


@pytest.mark.parametrize("started_as", PROCESSES)
def test_workers_and_pipe_commands_ignore_stop_signals_and_end_with_their_rank(tmp_path, synthetic_shards,
                                                                               started_as):
    shard = synthetic_shards / "caption" / "val-000000.tar"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", LEAVE + PROCESSES[started_as], str(shard), str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=120)  # without the exit handler: waits forever
    assert run.returncode == 1 and "leaving with the loader's worker still running" in run.stderr, run.stderr[-3000:]
    stop = {signal.SIGTERM, signal.SIGINT, signal.SIGUSR1}
    assert stop <= ignored_signals((tmp_path / "pipe.txt").read_text())
    worker, status = (tmp_path / "worker.txt").read_text().split(" ", 1)
    assert stop <= ignored_signals(status)
    assert not os.path.exists(f"/proc/{worker}"), "the worker outlived its rank"
