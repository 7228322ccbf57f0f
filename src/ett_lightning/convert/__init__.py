"""Converters from the formats people have (LLaVA JSON, VQAv2 files, image folders) to this package's shards."""

from ett_lightning.convert.folder import convert_folder
from ett_lightning.convert.llava import convert_llava
from ett_lightning.convert.shard_output import ShardOutput
from ett_lightning.convert.vqav2 import convert_vqav2

__all__ = ["ShardOutput", "convert_folder", "convert_llava", "convert_vqav2"]
