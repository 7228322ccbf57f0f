"""One ``lightning fit|validate`` run of a recipe, with its outputs in a directory of its own.

The recipe is copied with a handful of overrides (output directory, seed, steps, checkpoint to start from) to
``<out>/config.yaml`` and run as ``lightning <command> --config <out>/config.yaml``, so every step of an
experiment can be read and rerun by hand. The CLI's default loggers write ``<out>/metrics.csv`` (and TensorBoard
events); MetricsJSON writes ``<out>/metrics.json``; checkpoints land in ``<out>/checkpoints``. The config pins no
logger directory, so it reruns elsewhere with one ``--trainer.default_root_dir``.

Where the platform has fork servers, each run is forked from one server process that imported the CLI once, so it
starts with torch, Lightning and transformers loaded (seconds of every run on a small machine); elsewhere it is a
fresh ``python -m ett_lightning.cli``. Either way the runs are not this process's own children in the shell's sense:
a SIGTERM to it alone (a scheduler's, ``kill``'s) would leave them training, so :func:`stop_runs_on_signals` passes
it on to them.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import logging
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import yaml

log = logging.getLogger(__name__)
STOPPED_BY: list[signal.Signals] = []  # the stop signal this process received: no run starts any more
RUNNING: set[object] = set()  # process ids of the runs going on now (a placeholder while one starts)
RUNNING_LOCK = threading.RLock()  # re-entrant: the signal handler can interrupt its holder in the main thread


class RunsStopped(Exception):
    """A stop signal ended the runs: each fit saved its ``last.ckpt`` (the recipes' PreemptionCheckpoint) and none
    started after it."""


@dataclass
class LightningRun:
    """``overrides`` maps dotted config keys (``model.init_args.init_from``) to values; ``callback_args`` maps
    a callback's class_path to init_args to update in the recipe's callback of that class. ``threads`` is the
    run's number of torch CPU threads (None: torch's default, one per core), for runs that share the machine."""

    recipe: str
    out: Path
    command: Literal["fit", "validate"] = "fit"
    overrides: dict[str, Any] = field(default_factory=dict)
    callback_args: dict[str, dict[str, Any]] = field(default_factory=dict)
    threads: int | None = None
    seconds: float | None = field(default=None, init=False)  # wall time of its command; None until run here

    @property
    def last_checkpoint(self) -> Path:
        return self.out / "checkpoints" / "last.ckpt"

    @property
    def done(self) -> bool:
        """A fit whose ``last.ckpt`` reached its ``max_steps`` (one stopped earlier, by a kill or a signal, is not),
        or a validation that wrote its metrics."""
        if self.command != "fit":
            return (self.out / "metrics.json").is_file()
        if not self.last_checkpoint.is_file():
            return False
        try:
            step = torch.load(self.last_checkpoint, map_location="cpu", weights_only=True, mmap=True)["global_step"]
        except Exception:  # cut short or foreign: not finished (resuming it then fails with the CLI's one line)
            return False
        return step >= self.config()["trainer"]["max_steps"]

    def config(self) -> dict[str, Any]:
        """The recipe with this run's output directory and the overrides applied."""
        config = yaml.safe_load(Path(self.recipe).read_text())
        trainer = config.setdefault("trainer", {})
        trainer["default_root_dir"] = str(self.out)
        for callback in trainer.get("callbacks", []):
            if not isinstance(callback, dict):
                continue
            callback.setdefault("init_args", {}).update(self.callback_args.get(callback["class_path"], {}))
        for key, value in self.overrides.items():
            set_dotted(config, key, value)
        return config

    def run(self, reuse: bool = False) -> LightningRun:
        """Writes the config and runs it; raises on failure. With ``reuse``, a finished run is skipped and a fit
        stopped before its ``max_steps`` resumes from its ``last.ckpt``."""
        if STOPPED_BY:
            raise RunsStopped(f"stopped before {self.out}")
        if reuse and self.done:
            log.info("reusing %s", self.out)
            return self
        resume = ["--ckpt_path", "last"] if reuse and self.command == "fit" and self.last_checkpoint.is_file() else []
        if reuse and self.command == "fit" and not resume and self.out.is_dir():
            shutil.rmtree(self.out)  # an attempt killed before its first checkpoint: nothing to keep or resume
        self.out.mkdir(parents=True, exist_ok=True)
        config_path = self.out / "config.yaml"
        config = self.config()
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        print(f"$ lightning {self.command} --config {config_path}", *resume, flush=True)
        start = time.monotonic()
        exit_code = run_cli([self.command, "--config", str(config_path), *resume], self.out / "run.log",
                            fork=None if single_process(config) else False, threads=self.threads)
        self.seconds = time.monotonic() - start
        if exit_code != 0 and STOPPED_BY:
            raise RunsStopped(f"stopped {self.out} (exit {exit_code})")
        if exit_code != 0:
            tail = "".join((self.out / "run.log").read_text().splitlines(keepends=True)[-30:])
            raise RuntimeError(f"lightning {self.command} --config {config_path} failed "
                               f"(exit {exit_code}); last lines of {self.out / 'run.log'}:\n{tail}")
        return self

    def metrics(self) -> dict[str, float]:
        """The latest value of every metric logged at validation (``metrics.json``)."""
        return json.loads((self.out / "metrics.json").read_text())

    def curve(self, name: str) -> tuple[list[int], list[float]]:
        """(steps, values) of a metric logged per step, from ``metrics.csv`` (empty before the first log)."""
        steps, values = [], []
        if not (self.out / "metrics.csv").is_file():
            return steps, values
        with open(self.out / "metrics.csv") as file:
            for row in csv.DictReader(file):
                if row.get(name):
                    steps.append(int(row["step"]))
                    values.append(float(row[name]))
        return steps, values


def single_process(config: dict[str, Any]) -> bool:
    """Whether the run stays in one process: Lightning starts the other ranks of a multi-device run by running
    the command line again, which a forked child does not have (``devices: auto`` may mean several)."""
    trainer = config.get("trainer", {})
    return str(trainer.get("devices", "auto")) == "1" and str(trainer.get("num_nodes", 1)) == "1"


def run_cli(argv: list[str], log: Path, fork: bool | None = None, threads: int | None = None) -> int:
    """Exit code of ``lightning <argv>`` run in the current directory with stdout and stderr written to ``log``:
    forked from a server process that imported the CLI once when ``fork`` (default: where the platform has fork
    servers), else a fresh subprocess. The server runs nothing itself: forking a process that has run torch's
    OpenMP kernels can hang the child. ``threads`` caps the run's torch CPU threads (two runs that each spin two
    OpenMP threads on two cores spend most of their time in the kernel)."""
    if fork is None:
        fork = "forkserver" in multiprocessing.get_all_start_methods()
    if not fork:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
        with open(log, "w") as file:
            with running() as started:
                process = subprocess.Popen([sys.executable, "-m", "ett_lightning.cli", *argv], stdout=file,
                                           stderr=subprocess.STDOUT, env=env)
                started(process.pid)
                return process.wait()
    child = fork_server().Process(target=cli_in_child, args=(argv, str(log), os.getcwd(), threads))
    with running() as started:
        child.start()
        started(child.pid)
        child.join()
    return child.exitcode


@contextlib.contextmanager
def running():
    """Counts the run the block starts among those a stop signal reaches, from before it is started (a signal
    meanwhile does not take the moment for one between runs); the block passes the run's process id to the
    function it gets, and a run started as the signal came gets it then."""
    placeholder, pids = object(), []
    with RUNNING_LOCK:
        RUNNING.add(placeholder)

    def started(pid: int) -> None:
        with RUNNING_LOCK:
            RUNNING.add(pid)
            pids.append(pid)
        if STOPPED_BY:
            stop_running()

    try:
        yield started
    finally:
        with RUNNING_LOCK:
            RUNNING.discard(placeholder)
            RUNNING.difference_update(pids)


@contextlib.contextmanager
def stop_runs_on_signals():
    """While the block runs, SIGTERM or SIGINT to this process stops every run going on (each gets a SIGTERM: it saves
    its ``last.ckpt`` and exits) and no run starts after it: :meth:`LightningRun.run` raises :class:`RunsStopped`
    once they have ended. With no run going on (shards being written, results being summed up) the signal raises
    :class:`RunsStopped` at once. SIGINT is not passed on as itself: Ctrl-C has sent it to the runs already, and a
    second one aborts a run without its checkpoint. The handlers before are back afterwards. Enter from the main
    thread."""

    def stop(number: int, frame: Any) -> None:
        STOPPED_BY.append(signal.Signals(number))
        with RUNNING_LOCK:
            idle = not RUNNING
        if idle:
            raise RunsStopped(f"stopped by {signal.Signals(number).name} between runs")
        stop_running()

    STOPPED_BY.clear()  # an earlier stop in this process does not refuse this block's runs
    before = {number: signal.signal(number, stop) for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for number, handler in before.items():
            signal.signal(number, handler)


def stop_running() -> None:
    with RUNNING_LOCK:
        pids = [pid for pid in RUNNING if isinstance(pid, int)]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


@functools.cache
def fork_server() -> multiprocessing.context.BaseContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["ett_lightning.cli"])
    return context


def cli_in_child(argv: list[str], log: str, cwd: str, threads: int | None = None) -> None:
    """The forked child: the caller's directory, output to the log, ``threads`` torch threads, then the CLI (its
    SystemExit or exception sets the exit code)."""
    import torch

    from ett_lightning.cli import main  # here: the server preloads it; the demo's own process needs no CLI

    if threads:
        torch.set_num_threads(threads)
    multiprocessing.set_start_method(None, force=True)  # the DataLoader's workers: the platform's default again
    os.chdir(cwd)
    with open(log, "w") as file:
        redirect_output(file.fileno())
    main(argv)


def redirect_output(fd: int) -> None:
    """stdout, stderr and the logging handlers that write to them -> ``fd``: the file descriptors and Python's
    stream objects both (a server's streams are what its own parent had). Handlers of the ``logging.lastResort``
    kind, which libraries sometimes attach (lmms-eval's dependencies do), read ``sys.stderr`` on every record
    and need no redirect; their stream cannot be set."""
    names = {id(sys.stdout): "stdout", id(sys.stderr): "stderr"}
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    streams = {"stdout": open(1, "w", buffering=1, closefd=False), "stderr": open(2, "w", buffering=1, closefd=False)}
    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        for handler in getattr(logger, "handlers", []):
            if (isinstance(handler, logging.StreamHandler) and not isinstance(handler, type(logging.lastResort))
                    and id(handler.stream) in names):
                handler.setStream(streams[names[id(handler.stream)]])
    sys.stdout, sys.stderr = streams["stdout"], streams["stderr"]


def set_dotted(config: dict[str, Any], key: str, value: Any) -> None:
    """``set_dotted(c, "a.b.c", v)`` sets ``c["a"]["b"]["c"] = v``, creating the dicts on the way."""
    *parents, last = key.split(".")
    node = config
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
