"""Distributed strategies: FSDP with ETT's own wrap units."""

from ett_lightning.distributed.fsdp import ETTFSDPStrategy, wrap_classes

__all__ = ["ETTFSDPStrategy", "wrap_classes"]
