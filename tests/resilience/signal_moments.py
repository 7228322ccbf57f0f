"""A test callback that sends a stop signal at a seeded moment of a run, as a cluster or a terminal would."""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from pathlib import Path

from lightning.pytorch import Callback

TRAINING_HOOKS = ("on_train_batch_start", "on_before_backward", "on_after_backward", "on_before_optimizer_step")


class SignalAtMoment(Callback):
    """Sends ``signal_name`` to ``target`` (``rank0``, ``rank1``: that process only; ``group``: every process of the
    job, loader workers included, as Ctrl-C, ``timeout`` or SLURM do) once, at a moment drawn from ``seed``.

    ``phase=train``: in one of the run's first 3 steps after its first that no validation follows, in one of
    :data:`TRAINING_HOOKS` (forward, backward, optimizer step), after a further 0-20 ms on a timer thread, so it lands
    inside whatever the main thread is doing. ``phase=validation``: at the start of a drawn batch of the first
    validation after the run's first step, within 0-5 ms. The sending rank writes ``<directory>/sent.json``.
    """

    def __init__(self, target: str, phase: str, seed: int, directory: str, signal_name: str = "SIGTERM") -> None:
        draw = random.Random(seed)
        self.target, self.phase, self.directory = target, phase, Path(directory)
        self.number = getattr(signal, signal_name)
        self.draw = draw
        self.train_step: int | None = None
        self.hook = draw.choice(TRAINING_HOOKS) if phase == "train" else "on_validation_batch_start"
        self.val_batch = draw.randint(0, 1)
        self.delay = draw.uniform(0, 0.020 if phase == "train" else 0.005)
        self.first_step: int | None = None
        self.sent = False

    def sender(self, trainer) -> bool:
        return self.target == f"rank{trainer.global_rank}" or (self.target == "group" and trainer.is_global_zero)

    def on_train_start(self, trainer, pl_module) -> None:
        self.first_step = trainer.global_step
        every = int(trainer.val_check_batch)
        steps = [s for s in range(self.first_step + 1, self.first_step + 8) if (s + 1) % every]
        self.train_step = self.draw.choice(steps[:3])

    def due(self, trainer, hook: str, batch_idx: int = 0) -> bool:
        if self.sent or hook != self.hook or self.first_step is None or not self.sender(trainer):
            return False
        if self.phase == "train":
            return trainer.global_step == self.train_step
        return not trainer.sanity_checking and trainer.global_step > self.first_step and batch_idx == self.val_batch

    def send(self, trainer, hook: str) -> None:
        self.sent = True
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "sent.json").write_text(json.dumps(
            {"time": time.time() + self.delay, "step": trainer.global_step, "hook": hook, "target": self.target}))
        send, receiver = (os.killpg, os.getpgrp()) if self.target == "group" else (os.kill, os.getpid())
        threading.Timer(self.delay, send, (receiver, self.number)).start()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.maybe_send(trainer, "on_train_batch_start")

    def on_before_backward(self, trainer, pl_module, loss):
        self.maybe_send(trainer, "on_before_backward")

    def on_after_backward(self, trainer, pl_module):
        self.maybe_send(trainer, "on_after_backward")

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.maybe_send(trainer, "on_before_optimizer_step")

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.maybe_send(trainer, "on_validation_batch_start", batch_idx)

    def maybe_send(self, trainer, hook: str, batch_idx: int = 0) -> None:
        if self.due(trainer, hook, batch_idx):
            self.send(trainer, hook)
