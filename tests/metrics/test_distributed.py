"""Metric states reduce across ranks: 2 gloo processes give what 1 process gives on the same data."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ett_lightning.metrics import CodebookUsage, VQAAccuracy
from tests.conftest import free_port

PREDS = ["cat", "two", "red", "dog", "blue", "yes"]
TARGETS = [["cat"], ["2"], ["red", "red"] + ["blue"] * 8, ["cat"], ["blue"] * 3, ["yes"]]
INDICES = torch.tensor([[0, 1, 1, 5], [2, 2, 3, 3], [7, 7, 7, 0]])


def evaluate(preds, targets, indices) -> torch.Tensor:
    vqa, codebook = VQAAccuracy(), CodebookUsage(codebook_size=8)
    vqa.update(preds, targets)
    codebook.update(indices)
    usage = codebook.compute()
    return torch.stack([vqa.compute(), usage["usage"], usage["perplexity"]])


def worker(rank: int, port: int, results) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        results[rank] = evaluate(PREDS[rank::2], TARGETS[rank::2], INDICES[rank::2])
    finally:
        dist.destroy_process_group()


@pytest.mark.ddp
def test_two_processes_agree_with_one():
    single = evaluate(PREDS, TARGETS, INDICES)
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(worker, args=(free_port(), results), nprocs=2, join=True)
        assert torch.allclose(results[0], single) and torch.allclose(results[1], single)
