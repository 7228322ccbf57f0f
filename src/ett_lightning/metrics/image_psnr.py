"""PSNR per image, averaged over images: how tokenizer papers report reconstruction PSNR."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


class MeanImagePSNR(Metric):
    """Mean over images of ``10 log10(data_range^2 / MSE(image))``, the MSE over all pixels and channels of one
    image. Not the PSNR of the pooled MSE (torchmetrics' ``PeakSignalNoiseRatio``), which one bad image moves far
    less. Sums are reduced across DDP ranks. A pixel-identical pair has infinite PSNR and makes the mean infinite, as in
    the reference evaluations (scikit-image's PSNR does the same).
    """

    higher_is_better = True
    full_state_update = False

    def __init__(self, data_range: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.data_range = data_range
        self.add_state("psnr_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        if preds.shape != target.shape or preds.ndim < 2:
            raise ValueError(f"preds {tuple(preds.shape)} and target {tuple(target.shape)} must be equal [B, ...]")
        mse = (preds.double() - target.double()).pow(2).flatten(1).mean(dim=1)
        self.psnr_sum += (10.0 * torch.log10(self.data_range**2 / mse)).sum()
        self.count += preds.shape[0]

    def compute(self) -> Tensor:
        return (self.psnr_sum / self.count.clamp_min(1)).float()
