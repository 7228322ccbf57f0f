"""DataLoader workers that outlive a stop signal, so the rank that owns them decides when they end."""

from __future__ import annotations

import functools
import multiprocessing
import multiprocessing.util
import signal

IGNORED_IN_WORKERS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


def ignore_stop_signals(worker_id: int) -> None:
    """``worker_init_fn``: SIGTERM, SIGINT and SIGUSR1 are ignored in a loader worker (and in the ``pipe:`` commands
    it starts, which inherit the setting).

    Ctrl-C, ``timeout``, ``kill -- -PGID`` and SLURM signal every process of a job, workers included. A worker that
    dies of it makes its rank fail with "DataLoader worker (pid ...) is killed by signal" before the rank can save a
    checkpoint. Ignoring them, the worker keeps serving batches until its rank has saved and shuts it down, as at the
    end of any run; a worker whose rank is gone exits on its own (PyTorch's workers watch their parent).
    """
    for number in IGNORED_IN_WORKERS:
        signal.signal(number, signal.SIG_IGN)


@functools.cache
def end_workers_at_exit() -> None:
    """Makes the rank's exit end loader workers that are still running, with SIGKILL (once per process).

    At exit multiprocessing ends a process's daemonic children with SIGTERM and waits for them; a worker that
    ignores SIGTERM would make that wait endless whenever the rank leaves without shutting its loaders down
    (Lightning shuts down only the active loop's loaders when a run ends with an exception, e.g. a stop signal
    during validation). Loader workers are daemonic, so ending them at exit is what Python does anyway; this only
    makes the signal one they cannot ignore. It runs first in multiprocessing's own exit handler, which a process
    that multiprocessing started (a run forked by ``ett demo``) runs too, where ``atexit`` handlers never run.
    """
    multiprocessing.util.Finalize(None, kill_daemonic_children, exitpriority=1)


def kill_daemonic_children() -> None:
    for child in multiprocessing.active_children():
        if child.daemon:
            child.kill()
