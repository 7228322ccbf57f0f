"""A guard for the 2-process test: rank 1 alone sees a collapsed PSNR at the first check, and every rank writes
what it counted and measured at each check."""

from pathlib import Path

import torch

from ett_lightning.health import TokenizerGuard


class RankOneSeesCollapse(TokenizerGuard):
    def __init__(self, directory: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.directory = Path(directory)
        self.records: list[dict] = []

    def measure(self, trainer, pl_module) -> dict[str, float]:
        local = torch.stack([*self.window.closed, self.window.current]).sum(0)  # before the ranks' sum
        values = super().measure(trainer, pl_module)
        if trainer.global_rank == 1 and not self.records:
            values["probe_psnr_drop"] = 99.0
        self.records.append({"step": trainer.global_step, "local_counts": local.cpu(), "values": dict(values),
                             "probes": self.probes.images.clone()})
        return values

    def after_check(self, trainer, pl_module) -> None:
        super().after_check(trainer, pl_module)
        self.records[-1]["trips"] = self.trips
        self.directory.mkdir(parents=True, exist_ok=True)
        torch.save(self.records, self.directory / f"rank{trainer.global_rank}.pt")
