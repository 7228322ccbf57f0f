"""The tokenizer's health while an end-to-end run tunes it: codebook use, drift from the start, reconstruction."""

from __future__ import annotations

import itertools
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from ett_lightning.health.code_window import CodeWindow, code_statistics
from ett_lightning.health.drift import WeightDrift
from ett_lightning.health.probes import ProbeImages
from ett_lightning.user_errors import UserError

PREFIX = "health/"


class TokenizerHealth(L.Callback):
    """Every ``every_n_steps`` training steps, logs ``health/...`` (to the loggers and ``metrics.json``):

    - ``window_usage``, ``window_perplexity``, ``window_entropy`` (normalised, in [0, 1]), ``window_dead_share``:
      the codes the tokenizer emitted in the training steps of the last ``window_checks`` intervals, counted on
      every rank and summed across ranks (2 ranks give the figures of 1 rank that sees both ranks' batches);
    - ``codebook_drift``, ``encoder_drift``: ``||W - W0|| / ||W0||`` against the weights the run started from;
    - on ``num_probe_images`` held-out images chosen at the start (from the validation data, else the first
      training batch; rank 0's, the same on every rank) and stored in the run's checkpoints:
      ``probe_index_flips`` (share of token positions whose code changed), ``probe_psnr``, ``probe_ssim`` and their
      ``_drop`` from the start, ``probe_usage`` / ``probe_perplexity`` and their ``_ratio`` to the start.

    Does nothing where the tokenizer does not train. The values are the same on every rank, so a subclass can act on
    them (:class:`~ett_lightning.health.TokenizerGuard`) and every rank takes the same decision.

    Args:
        every_n_steps: steps between checks (each is logged at its step, whatever ``log_every_n_steps`` is).
        window_checks: how many check intervals the code window spans.
        num_probe_images: how many probe images.
        dead_below: a code used fewer times than this in the window counts as dead (1: never used).
        weight_drift: keep a copy of the starting codebook and encoder (in memory and in each checkpoint) and log
            their drift; off saves that memory for very large tokenizers.
    """

    def __init__(self, every_n_steps: int = 50, window_checks: int = 2, num_probe_images: int = 64,
                 dead_below: int = 1, weight_drift: bool = True) -> None:
        if min(every_n_steps, window_checks, num_probe_images, dead_below) < 1:
            raise UserError(f"{type(self).__name__}: every_n_steps, window_checks, num_probe_images and dead_below "
                            "must be >= 1")
        self.every_n_steps = every_n_steps
        self.window_checks = window_checks
        self.num_probe_images = num_probe_images
        self.dead_below = dead_below
        self.weight_drift = weight_drift
        self.active = False
        self.counting = False
        self.window: CodeWindow | None = None
        self.probes: ProbeImages | None = None
        self.pending: Tensor | None = None  # probe images whose start is not measured yet
        self.drift: WeightDrift | None = None
        self.saved: dict[str, Any] = {}
        self.values: dict[str, float] = {}
        self.checked = 0  # the step of the last check
        self.keep_latents = False  # keep the quantizer's last training input (a subclass that needs it sets this)
        self.latents: Tensor | None = None
        self.counts: Tensor | None = None  # the window's code counts at the last check, summed across ranks
        self.hook = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Starts measuring, with the state a resumed run saved: here, not at fit start, because FSDP2 restores the
        checkpoint (and the callbacks' states) after the fit has started."""
        is_trainable = getattr(pl_module, "is_trainable", None)
        self.active = bool(is_trainable and is_trainable("tokenizer"))
        if not self.active:
            return
        tokenizer = pl_module.tokenizer
        self.window = CodeWindow(tokenizer.codebook_size, self.window_checks)
        self.hook = tokenizer.quantize.register_forward_hook(self.count_codes)
        if self.weight_drift:
            groups = {"codebook": tokenizer.quantize} if tokenizer.quantize.learned_codebook else {}
            self.drift = WeightDrift({**groups, "encoder": tokenizer.encoder})  # LFQ / FSQ: no codebook to move
            if "drift" in self.saved:
                self.drift.load_state_dict(self.saved["drift"])
        if "probes" in self.saved:
            self.probes = ProbeImages.from_state(self.saved["probes"], tokenizer, self.num_probe_images)
        else:
            self.pending = trainer.strategy.broadcast(probe_images(trainer, self.num_probe_images) if
                                                      trainer.is_global_zero else None, src=0)

    def count_codes(self, module, inputs, output) -> None:
        if self.counting:
            self.window.add(output.indices)
            if self.keep_latents:
                self.latents = inputs[0].detach()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.active and self.probes is None and self.pending is None:  # no validation data: the first batch
            self.pending = trainer.strategy.broadcast(batch.images[: self.num_probe_images].cpu(), src=0)
            rank_zero_warn(f"{type(self).__name__}: no validation data, so the probes are {len(self.pending)} images "
                           "of the first training batch (not held out); give data.val_shards for "
                           f"{self.num_probe_images} held-out probes")
        self.counting = self.active

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        """The starting tokenizer's view of the probes, measured before the first update: not earlier, because
        FSDP2 needs the whole model's forward to run before any part's own."""
        self.counting = False
        if self.pending is not None:
            self.probes = ProbeImages.choose(self.pending, pl_module.tokenizer)
            self.pending = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.counting = False
        step = trainer.global_step  # with gradient accumulation, several batches end at one step: check it once
        if self.active and self.probes is not None and step % self.every_n_steps == 0 and step != self.checked:
            self.checked = step
            self.values = self.measure(trainer, pl_module)
            publish(trainer, self.values)
            self.after_check(trainer, pl_module)

    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        counts = trainer.strategy.reduce(self.window.close_block().to(pl_module.device), reduce_op="sum")
        self.counts = counts
        window = code_statistics(counts, self.dead_below)
        values = {f"window_{name}": value for name, value in window.items()}
        values |= self.probes.compare(pl_module.tokenizer)
        if self.drift is not None:
            values |= self.drift.measure()
        return values

    def after_check(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Called on every rank after each check, with the values in ``self.values``."""

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self.hook is not None:
            self.hook.remove()
            self.hook = None

    def state_dict(self) -> dict[str, Any]:
        state = {}
        if self.probes is not None:
            state["probes"] = self.probes.state_dict()
        if self.drift is not None:
            state["drift"] = self.drift.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keeps a checkpoint's state for :meth:`on_train_start`, which checks it against the model."""
        self.saved = dict(state_dict) if isinstance(state_dict, dict) else {}


def publish(trainer: L.Trainer, values: dict[str, float]) -> None:
    """``health/<name>`` to the loggers at this step (whatever ``log_every_n_steps`` is) and to the trainer's
    ``callback_metrics`` (``metrics.json``, other callbacks)."""
    metrics = {PREFIX + name: value for name, value in values.items()}
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step)
    trainer.callback_metrics.update({name: torch.tensor(value) for name, value in metrics.items()})


def probe_images(trainer: L.Trainer, count: int) -> Tensor | None:
    """Up to ``count`` uint8 images from the data module's validation loader; None without validation data."""
    datamodule = trainer.datamodule
    if datamodule is None or getattr(datamodule, "val_urls", None) is None:
        return None
    images = []
    for batch in itertools.islice(datamodule.val_dataloader(), count):
        images.append(batch.images)
        if sum(len(part) for part in images) >= count:
            break
    return torch.cat(images)[:count].cpu() if images else None
