"""Image discriminators for the tokenizer's adversarial loss: taming's PatchGAN and a frozen-timm-backbone one."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Norm = Literal["batch", "group", "none"]


def norm_layer(kind: Norm, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(32, channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"discriminator norm must be 'batch', 'group' or 'none', got {kind!r}")


class PatchGANDiscriminator(nn.Module):
    """pix2pix / taming PatchGAN: ``num_layers`` stride-2 4x4 convs (width doubling, capped at 8x), a stride-1
    conv, then a 1-channel conv: one real/fake logit per overlapping patch, [B, 1, h, w].

    Initialised as taming does (conv weights N(0, 0.02), norm scales N(1, 0.02)).
    """

    def __init__(self, in_channels: int = 3, ch: int = 64, num_layers: int = 3, norm: Norm = "batch") -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ch, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        width = ch
        for i in range(1, num_layers + 1):
            out = ch * min(2 ** i, 8)
            stride = 2 if i < num_layers else 1
            layers += [nn.Conv2d(width, out, 4, stride=stride, padding=1, bias=norm == "none"),
                       norm_layer(norm, out), nn.LeakyReLU(0.2)]
            width = out
        layers.append(nn.Conv2d(width, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        self.apply(init_weights)

    def forward(self, images: Tensor) -> Tensor:
        return self.main(images)


def init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class TimmDiscriminator(nn.Module):
    """Frozen timm backbone (e.g. a DINO ViT or a ConvNet) with a trainable 1x1-conv head on each of its
    ``feature_layers``' feature maps; the logits of all heads are concatenated, [B, sum(h*w)].

    ``weights`` is a local timm checkpoint file (no download is attempted); without it the backbone is random,
    which is only useful in tests. Images in [-1, 1] are resized to ``image_size`` and normalised with the
    backbone's own mean and std. ``model_kwargs`` go to ``timm.create_model`` (e.g. ``{"img_size": 64}`` for a
    ViT at another resolution; then set ``image_size`` to match).
    """

    def __init__(self, model_name: str = "vit_small_patch16_224.dino", weights: str | None = None,
                 feature_layers: tuple[int, ...] = (-1,), image_size: int = 224, head_channels: int = 64,
                 model_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__()
        if weights is not None and not Path(weights).is_file():
            raise FileNotFoundError(f"discriminator backbone weights not found: {weights}; pass a local timm "
                                    "checkpoint file (weights=None gives a random backbone: tests only)")
        overlay = {"file": weights} if weights is not None else None
        import timm  # at build time: importing timm costs seconds (it imports wandb when installed)

        self.backbone = timm.create_model(model_name, pretrained=weights is not None, pretrained_cfg_overlay=overlay,
                                          features_only=True, out_indices=tuple(feature_layers), **(model_kwargs or {}))
        self.backbone.requires_grad_(False).eval()
        config = self.backbone.pretrained_cfg
        self.register_buffer("mean", torch.tensor(config["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config["std"]).view(1, 3, 1, 1), persistent=False)
        self.image_size = image_size
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, head_channels, 1), nn.LeakyReLU(0.2), nn.Conv2d(head_channels, 1, 1))
            for c in self.backbone.feature_info.channels()
        )

    def train(self, mode: bool = True) -> TimmDiscriminator:
        """The frozen backbone stays in eval mode; only the heads train."""
        super().train(mode)
        self.backbone.eval()
        return self

    def forward(self, images: Tensor) -> Tensor:
        x = F.interpolate((images + 1) / 2, size=self.image_size, mode="bilinear", align_corners=False)
        features = self.backbone((x - self.mean) / self.std)
        return torch.cat([head(f).flatten(1) for head, f in zip(self.heads, features)], dim=1)
