"""Preemption: a signal to any of the processes becomes one checkpoint and a clean exit of every rank, and
``--ckpt_path=last`` picks the run up again."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ett_lightning.resilience.recorded_signals import RecordedSignalConnector

log = logging.getLogger(__name__)


class PreemptionCheckpoint(Callback):
    """SIGTERM, SIGINT and ``signals`` (SIGUSR1 by default: SLURM's ``--signal=USR1@120``) reaching any subset of
    the processes, in any phase, end the run the same way on every rank: the current batch finishes, the ranks agree
    at the next batch boundary (one small all-reduce per batch), ``last.ckpt`` is written where the ModelCheckpoint
    callback writes it, and every rank leaves with Lightning's ``SIGTERMException`` carrying exit status 128 + the
    signal's number (143 for SIGTERM, 130 for SIGINT, 138 for SIGUSR1: what a shell reports for a process that
    signal ended), so ``lightning fit ... && next-step`` and a scheduler's job status see an interrupted run, never a
    finished one. ``predict``, ``validate`` and ``test`` stop the same way, with their outputs incomplete.

    The signal handlers only record (:class:`RecordedSignalConnector`, installed in place of Lightning's, whose
    SIGTERM handler runs a collective inside the handler and deadlocks DDP). Training agrees after each optimizer
    step; validation, test and predict after each batch. A signal during validation inside ``fit`` saves the
    state of the last finished training step; the resumed run goes on training and does not repeat that
    validation. Outside ``fit`` nothing is saved. With Lightning's SLURM auto-requeue enabled, its requeue signal
    writes ``hpc_ckpt_<n>.ckpt`` and requeues the job instead (see docs/operations.md).

    Args:
        signals: signal names handled besides SIGTERM and SIGINT (SLURM's ``--signal=USR1@120``).
    """

    def __init__(self, signals: tuple[str, ...] = ("SIGUSR1",)) -> None:
        self.signals = tuple(signals)
        self.connector: RecordedSignalConnector | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Replaces the trainer's signal connector before the trainer registers its handlers."""
        self.connector = RecordedSignalConnector(trainer, tuple(getattr(signal, name) for name in self.signals))
        trainer._signal_connector = self.connector

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not trainer.fit_loop.epoch_loop._should_accumulate():
            self.stop_if_signalled(trainer)

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        self.stop_if_signalled(trainer)

    def on_test_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        self.stop_if_signalled(trainer)

    def on_predict_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        self.stop_if_signalled(trainer)

    def stop_if_signalled(self, trainer: Trainer) -> None:
        """All ranks learn which ranks were signalled; if any was, all save (during ``fit``) and leave together."""
        connector = self.connector
        if connector is None:
            return
        received = signals_by_rank(trainer, connector.received)
        if not any(received):
            return
        if connector.received is not None:
            log.warning("rank %d: %s received during %s", trainer.global_rank, connector.received.name,
                        connector.received_during)
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            if connector.requeue_signal is not None and connector.requeue_signal in received:
                connector.requeue()
            else:
                path = save_last(trainer)
                if trainer.is_global_zero:
                    log.warning("%s: saved %s at step %d and stopping; resume with --ckpt_path=last",
                                describe(received), path, trainer.global_step)
        connector.received_sigterm = True
        raise SIGTERMException(interrupted_status(received))


def signals_by_rank(trainer: Trainer, received: signal.Signals | None) -> list[int]:
    """The signal number each rank has received (0: none), known to every rank after one all-reduce."""
    numbers = torch.zeros(trainer.world_size, dtype=torch.int32, device=trainer.strategy.root_device)
    numbers[trainer.global_rank] = int(received or 0)
    if trainer.world_size > 1:
        numbers = trainer.strategy.reduce(numbers, reduce_op="sum")
    return numbers.tolist()


def interrupted_status(received: list[int]) -> int:
    """128 + the lowest signal number any rank received: the same status on every rank."""
    return 128 + min(number for number in received if number)


def describe(received: list[int]) -> str:
    """``SIGTERM on rank 1 of 2`` / ``SIGINT on ranks 0, 1 of 2``."""
    names = sorted({signal.Signals(number).name for number in received if number})
    ranks = [str(rank) for rank, number in enumerate(received) if number]
    return f"{'/'.join(names)} on rank{'s' if len(ranks) > 1 else ''} {', '.join(ranks)} of {len(received)}"


def save_last(trainer: Trainer) -> Path:
    """Writes ``last.ckpt`` in the ModelCheckpoint directory (where ``ckpt_path=last`` looks), else in the run's root.

    The ModelCheckpoint callbacks saving ``last`` there are told the file is theirs (``last_model_path``, part of their
    saved state): otherwise, resumed from it, they would take it for someone else's file and write ``last-v1.ckpt``
    beside it, and ``--ckpt_path=last`` would find the older file.
    """
    checkpoints = [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)]
    first = checkpoints[0].dirpath if checkpoints else None
    directory = Path(first) if first else Path(trainer.default_root_dir)
    path = directory / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"
    for checkpoint in checkpoints:
        if checkpoint.save_last and checkpoint.dirpath and Path(checkpoint.dirpath) == directory:
            checkpoint.last_model_path = str(path)
    trainer.save_checkpoint(path)
    return path
