"""Run by tests/distributed/test_fsdp2.py in 2 spawned processes sharing one FSDP2 mesh:

- the tiny module answers the same prompts unsharded and sharded, with a different ``max_new_tokens`` per rank, so
  the ranks finish generating at different lengths (as ranks whose answers end at different EOS positions do);
- a LoRA module takes one sharded training step on each rank's own batch, against the unsharded module stepping on
  both batches: the gradients FSDP2 averages over the ranks must equal the unsharded ones.
"""

import copy
import json
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy

from ett_lightning.distributed import shard_module
from ett_lightning.models import LoRA
from tests.conftest import make_batch, tiny_module
from tests.distributed.rank_digest import whole

MAX_NEW_TOKENS = (2, 9)  # rank 0 finishes first and keeps taking part in rank 1's forwards


def run_on_rank(rank: int, port: int, directory: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        mesh = init_device_mesh("cpu", (2,))
        results = {**answers(rank, mesh), "lora_gradients": lora_gradient_errors(rank, mesh)}
        Path(directory, f"rank{rank}.json").write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


def answers(rank: int, mesh) -> dict[str, list[str]]:
    torch.manual_seed(0)
    module = tiny_module("posttrain").eval()
    batch = make_batch(module, batch_size=1 + rank, seed=rank)
    unsharded = module.generate(batch, MAX_NEW_TOKENS[rank])
    shard_module(module, mesh, MixedPrecisionPolicy())
    return {"unsharded": unsharded, "sharded": module.generate(batch, MAX_NEW_TOKENS[rank])}


def lora_gradient_errors(rank: int, mesh) -> dict[str, float]:
    """Each gradient's largest difference from the unsharded module's, by the name of every parameter that got one
    in either (inf where only one did)."""
    module = tiny_module("ett", lora=LoRA(rank=4, dropout=0.0))
    reference = copy.deepcopy(module)
    batches = [make_batch(module, seed=seed) for seed in (0, 1)]
    for batch in batches:
        (reference.training_step(batch, 0) / len(batches)).backward()
    shard_module(module, mesh, MixedPrecisionPolicy(), activation_checkpointing=True)
    module.training_step(batches[rank], 0).backward()
    expected = {name: p.grad for name, p in reference.named_parameters() if p.grad is not None}
    sharded = {name: whole(p.grad) for name, p in module.named_parameters() if p.grad is not None}
    return {name: (sharded[name] - expected[name]).abs().max().item()
            if name in sharded and name in expected else float("inf") for name in sorted(sharded | expected)}
