"""Preemption: a signal becomes a checkpoint and a clean exit, and ``ckpt_path=last`` picks the run up again."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

log = logging.getLogger(__name__)


class PreemptionCheckpoint(Callback):
    """On SIGTERM (and ``signals``, SIGUSR1 by default: what SLURM sends with ``--signal=USR1@120``) the current
    step finishes, ``last.ckpt`` is written where the ModelCheckpoint callback writes it, and training stops.

    SIGTERM is received through Lightning's own handler (``trainer.received_sigterm``), which otherwise only
    stops at the end of an epoch, without a checkpoint. Other signals get a handler here unless one is already
    installed (Lightning's SLURM auto-requeue owns SIGUSR1 when enabled). Ranks agree before saving, so a signal
    that reached only some ranks cannot deadlock DDP.

    Args:
        signals: signal names besides SIGTERM that checkpoint and stop (SLURM's ``--signal=USR1@120``).
    """

    def __init__(self, signals: tuple[str, ...] = ("SIGUSR1",)) -> None:
        self.signals = tuple(signals)
        self.received: str | None = None
        self.previous: dict[int, Any] = {}

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for name in self.signals:
            number = getattr(signal, name)
            if signal.getsignal(number) in (None, signal.SIG_DFL):
                self.previous[number] = signal.signal(number, self.notice)

    def notice(self, number: int, frame: Any) -> None:
        self.received = signal.Signals(number).name

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.received_sigterm and self.received is None:
            self.received = "SIGTERM"
        if not trainer.strategy.reduce_boolean_decision(self.received is not None, all=False):
            return
        path = last_checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        log.warning("%s received: saved %s at step %d and stopping; resume with --ckpt_path=last",
                    self.received or "signal on another rank", path, trainer.global_step)
        trainer.should_stop = True

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)
        self.previous.clear()


def last_checkpoint_path(trainer: Trainer) -> Path:
    """``last.ckpt`` in the ModelCheckpoint directory (where ``ckpt_path=last`` looks), else the run's root."""
    checkpoint = next((c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)), None)
    directory = checkpoint.dirpath if checkpoint and checkpoint.dirpath else Path(trainer.default_root_dir)
    return Path(directory) / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"
