"""DataLoader workers that outlive a stop signal, so the rank that owns them decides when they end."""

from __future__ import annotations

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
