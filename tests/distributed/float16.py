"""Pieces for the float16 tests: a real float16 precision plugin on CPU (also for the single-process tests) and
a module whose loss is NaN on one rank only."""

import torch
from lightning.pytorch.plugins.precision import MixedPrecision

from ett_lightning import ETTModule


class CPUFloat16(MixedPrecision):
    """``16-mixed`` with loss scaling on CPU (Lightning maps ``precision=16-mixed`` to bf16 there); starts at a
    loss scale that overflows, so the GradScaler's calibration steps happen in the test too."""

    def __init__(self, init_scale: float = 2.0**40) -> None:
        super().__init__("16-mixed", "cpu", torch.amp.GradScaler("cpu", init_scale=init_scale))


class NaNOnRankOne(ETTModule):
    """The caption loss is NaN on rank 1 at every step and finite on rank 0: after DDP's all-reduce both ranks
    hold the same non-finite gradients, but only rank 1 sees a non-finite loss."""

    def caption_loss(self, *args, **kwargs):
        loss = super().caption_loss(*args, **kwargs)
        return loss * float("nan") if self.global_rank == 1 else loss
