"""Sharded training: FSDP2 over ETT's units (``--trainer.strategy=fsdp2``)."""

from ett_lightning.distributed.fsdp2 import FSDP2Strategy, is_sharded, shard_module
from ett_lightning.distributed.units import wrap_classes

__all__ = ["FSDP2Strategy", "is_sharded", "shard_module", "wrap_classes"]
