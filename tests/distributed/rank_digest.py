"""A callback for the multi-process tests: each rank writes its parameters after training (whole, also when FSDP2
shards them), so the test can compare ranks and runs."""

from pathlib import Path

import torch
from lightning.pytorch import Callback
from torch.distributed.tensor import DTensor


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor: gathered from every rank's shard when FSDP2 sharded it (a collective)."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


class SaveRankParameters(Callback):
    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)

    def on_train_end(self, trainer, pl_module) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        state = {name: whole(p).detach().cpu().clone() for name, p in pl_module.named_parameters()}
        torch.save({"params": state, "step": trainer.global_step, "world_size": trainer.world_size,
                    "node_rank": trainer.node_rank},
                   self.directory / f"rank{trainer.global_rank}.pt")


def rank_digest(directory: Path) -> list[str]:
    """Command-line arguments adding :class:`SaveRankParameters` to a run, writing into ``directory``."""
    return ["--trainer.callbacks+=tests.distributed.rank_digest.SaveRankParameters",
            f"--trainer.callbacks.directory={directory}"]
