"""Run by tests/distributed/test_fsdp2.py in 2 spawned processes: the tiny module answers the same prompts unsharded
and sharded by FSDP2, with a different ``max_new_tokens`` per rank, so the ranks finish generating at different
lengths (as ranks whose answers end at different EOS positions do)."""

import json
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy

from ett_lightning.distributed import shard_module
from tests.conftest import make_batch, tiny_module

MAX_NEW_TOKENS = (2, 9)  # rank 0 finishes first and keeps taking part in rank 1's forwards


def answer_on_rank(rank: int, port: int, directory: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        module = tiny_module("posttrain").eval()
        batch = make_batch(module, batch_size=1 + rank, seed=rank)
        unsharded = module.generate(batch, MAX_NEW_TOKENS[rank])
        shard_module(module, init_device_mesh("cpu", (2,)), MixedPrecisionPolicy())
        sharded = module.generate(batch, MAX_NEW_TOKENS[rank])
        Path(directory, f"rank{rank}.json").write_text(json.dumps({"unsharded": unsharded, "sharded": sharded}))
    finally:
        dist.destroy_process_group()
