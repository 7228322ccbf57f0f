"""Signal handlers that only record: the ranks act on a signal together, at a batch boundary, never inside a handler."""

from __future__ import annotations

import signal
from types import FrameType

from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch import Trainer
from lightning.pytorch.trainer.connectors.signal_connector import _SignalConnector

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class RecordedSignalConnector(_SignalConnector):
    """The trainer's signal connector, with handlers that note which signal arrived and in which stage, and nothing
    else; :class:`~ett_lightning.resilience.PreemptionCheckpoint` installs it and acts on the note.

    Lightning's own SIGTERM handler broadcasts to the other ranks from inside the handler. A handler runs wherever
    the main thread is (a forward pass, DDP's gradient all-reduce, a checkpoint write), so that broadcast meets a
    different collective on the other rank and both wait for the backend's timeout (30 minutes with gloo, 10 with
    NCCL). It also sets ``trainer.received_sigterm`` on the signalled rank only, and Lightning's loops then stop
    that rank alone. Here ``received_sigterm`` stays False until the ranks have agreed.

    SLURM auto-requeue (Lightning's ``SLURMEnvironment(auto_requeue=True)``) saves and requeues inside its SIGUSR1
    handler, which deadlocks the same way under DDP; its requeue signal is recorded here too, and
    :meth:`requeue` runs Lightning's save-and-requeue at the agreed boundary instead.

    A second SIGINT raises ``KeyboardInterrupt`` as usual, for someone at a terminal who will not wait.
    """

    def __init__(self, trainer: Trainer, signals: tuple[signal.Signals, ...] = ()) -> None:
        super().__init__(trainer)
        self.extra_signals = tuple(signals)
        self.received: signal.Signals | None = None
        self.received_during: str | None = None

    @property
    def requeue_signal(self) -> signal.Signals | None:
        """The signal Lightning's SLURM auto-requeue answers (SIGUSR1 unless configured), when it is enabled."""
        environment = self.trainer._accelerator_connector.cluster_environment
        if isinstance(environment, SLURMEnvironment) and environment.auto_requeue:
            return signal.Signals(environment.requeue_signal or signal.SIGUSR1)
        return None

    def handled_signals(self) -> list[signal.Signals]:
        numbers = [*STOP_SIGNALS, *self.extra_signals, self.requeue_signal]
        return sorted({signal.Signals(number) for number in numbers if number is not None})

    def register_signal_handlers(self) -> None:
        self.received_sigterm = False
        self.received = self.received_during = None
        self._original_handlers = self._get_current_signal_handlers()
        for number in self.handled_signals():
            self._register_signal(number, self.record)  # Lightning's: only from the main thread

    def record(self, number: int, frame: FrameType | None) -> None:
        """Notes the first signal and the trainer's stage when it came; the trainer goes on undisturbed."""
        if number == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt
        if self.received is None:
            self.received = signal.Signals(number)
            stage = self.trainer.state.stage
            self.received_during = stage.value if stage is not None else "setup"

    def requeue(self) -> None:
        """Lightning's SLURM auto-requeue (``hpc_ckpt_<n>.ckpt`` in the run directory, then ``scontrol requeue`` from
        global rank 0), called on every rank at once."""
        self._slurm_sigusr_handler_fn(self.requeue_signal, None)
