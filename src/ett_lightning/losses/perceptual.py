"""LPIPS perceptual loss through the ``lpips`` package, loadable offline."""

from __future__ import annotations

import re
from pathlib import Path

import lpips
from torch import Tensor, nn

from ett_lightning.checkpoints.files import load_state_dict_file


class LPIPSLoss(nn.Module):
    """Frozen LPIPS distance between reconstructions and inputs (both in [-1, 1]), averaged over the batch.

    The calibrated linear heads ship inside the ``lpips`` package. The backbone (VGG by default) comes from
    ``backbone_weights`` (a local torchvision state dict such as ``vgg16-397923af.pth``) or, when that is None,
    from torchvision's cache / download. ``random_backbone`` keeps a randomly initialised backbone: only for
    tests, never for training.

    Args:
        net: LPIPS backbone: ``vgg``, ``alex`` or ``squeeze``.
        backbone_weights: local torchvision state dict of the backbone; None uses torchvision's cache or download.
        random_backbone: keep a randomly initialised backbone (tests only).
    """

    def __init__(self, net: str = "vgg", backbone_weights: str | None = None, random_backbone: bool = False) -> None:
        super().__init__()
        if backbone_weights is not None or random_backbone:
            self.lpips = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
            if backbone_weights is not None:
                load_backbone(self.lpips.net, backbone_weights)
        else:
            self.lpips = download_lpips(net)
        self.lpips.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LPIPSLoss:
        """Stays in eval mode: LPIPS has dropout in its heads that must not be active."""
        return super().train(False)

    def forward(self, reconstructions: Tensor, images: Tensor) -> Tensor:
        return self.lpips(reconstructions.float(), images.float()).mean()


def download_lpips(net: str) -> lpips.LPIPS:
    try:
        return lpips.LPIPS(net=net, verbose=False)
    except (OSError, RuntimeError) as err:
        raise FileNotFoundError(
            f"LPIPS needs the torchvision {net} backbone weights, which are not in the torch hub cache and could not "
            "be downloaded (offline?). Copy the file (for vgg: vgg16-397923af.pth) to this machine and set "
            "`perceptual.init_args.backbone_weights: /path/to/vgg16-397923af.pth`, or set perceptual_weight: 0."
        ) from err


def load_backbone(backbone: nn.Module, path: str) -> None:
    """Loads a torchvision ``features.N.*`` state dict into lpips' ``sliceK.N.*`` layout."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"LPIPS backbone_weights file not found: {path}")
    source = load_state_dict_file(path)
    target = {}
    for key in backbone.state_dict():
        torchvision_key = re.sub(r"^slice\d+\.", "features.", key)
        if torchvision_key not in source:
            raise KeyError(f"{path} has no {torchvision_key!r}: expected a torchvision {type(backbone).__name__} file")
        target[key] = source[torchvision_key]
    backbone.load_state_dict(target, strict=True)


__all__ = ["LPIPSLoss"]
