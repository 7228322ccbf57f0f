"""Epoch-end reductions that every DDP rank reaches with the same decisions: metrics and Python objects."""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import lightning as L
import torch
import torch.distributed as dist
from torchmetrics import Metric


def log_synced(trainer: L.Trainer, pl_module: L.LightningModule, metrics: Mapping[str, Metric],
               prefix: str = "val/") -> None:
    """Logs ``prefix + name`` for every metric updated on any rank, then resets them all. Call on every rank.

    ``Metric.compute`` gathers the states of all ranks (a collective), so a rank that skipped it because it saw no
    data (``if metric.update_count``) would leave the others waiting forever. Here the ranks first add up their
    update counts (one all-reduce for all metrics) and then all compute the same metrics; a rank without data
    contributes empty states. Dict-valued metrics are logged as ``<name>_<key>``.
    """
    counts = torch.tensor([metric.update_count for metric in metrics.values()], device=pl_module.device)
    counts = trainer.strategy.reduce(counts, reduce_op="sum")
    for (name, metric), updated in zip(metrics.items(), counts.tolist()):
        if updated:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r".*was called before the ``update`` method.*")
                value = metric.compute()
            values = {f"{name}_{k}": v for k, v in value.items()} if isinstance(value, dict) else {name: value}
            for key, v in values.items():
                pl_module.log(f"{prefix}{key}", v.float())
        metric.reset()


def gather_objects(items: list) -> list:
    """The concatenation of ``items`` over all ranks (every rank gets it); ``items`` itself in a single process.
    A collective: call on every rank."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(items)
    gathered: list[list] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(gathered, items)
    return [item for part in gathered for item in part]
