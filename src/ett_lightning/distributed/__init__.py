"""Distributed strategies: FSDP2 sharding of ETT modules (``--trainer.strategy=fsdp2``), and FSDP1 with ETT's units."""

from ett_lightning.distributed.fsdp import ETTFSDPStrategy, wrap_classes
from ett_lightning.distributed.fsdp2 import FSDP2Strategy, is_sharded, shard_module

__all__ = ["ETTFSDPStrategy", "FSDP2Strategy", "is_sharded", "shard_module", "wrap_classes"]
