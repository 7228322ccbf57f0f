"""Logging losses per step and per evaluation epoch without paying for steps the loggers do not write."""

from __future__ import annotations

import lightning as L
from torch import Tensor

from ett_lightning.data.batching.batch import ETTBatch


def evaluation_rows(batch: ETTBatch) -> tuple[ETTBatch, int]:
    """What an evaluation step computes on, and the weight its logged means get: the real rows and their count,
    or, for a batch that is all padding, the batch itself with weight 0. Logging it anyway keeps every DDP rank
    logging the same names, which the epoch-end reduction needs; the weight keeps it out of the means."""
    real = batch.without_padding()
    return (real, len(real)) if len(real) else (batch, 0)


def log_split(module: L.LightningModule, split: str, parts: dict[str, Tensor], batch_size: int) -> None:
    """Logs ``parts`` as ``<split>/<name>``: per step while training, epoch means synced across ranks otherwise.

    The training step's parts also stay on ``module.train_parts``, where NonFiniteGuard finds which went bad.
    Training steps whose metrics the loggers will not write are not logged at all (see :func:`writes_step_logs`).
    """
    training = split == "train"
    detached = {name: value.detach() for name, value in parts.items()}
    if training:
        module.train_parts = detached
        if not writes_step_logs(module):
            return
    values = {f"{split}/{name}": value for name, value in detached.items()}
    module.log_dict(values, on_step=training, on_epoch=not training, sync_dist=not training, batch_size=batch_size)


def writes_step_logs(module: L.LightningModule) -> bool:
    """Whether the loggers write step metrics this step (every ``log_every_n_steps``).

    Lightning accepts ``self.log`` on every step but writes only at the interval, and each call costs
    milliseconds of Python bookkeeping (measured in docs/performance.md). Outside a fit, True.
    """
    try:
        connector = module.trainer._logger_connector
    except RuntimeError:
        return True
    return connector.should_update_logs
