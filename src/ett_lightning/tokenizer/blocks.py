"""Building blocks of the VQGAN-family autoencoder.

Module and attribute names follow the taming-transformers layout (``norm1``, ``conv1``, ``nin_shortcut``,
``q``/``k``/``v``/``proj_out``) so that public tokenizer checkpoints map onto these modules key for key.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


def group_norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    """GroupNorm as VQGAN uses it; ``groups`` shrinks to divide ``channels`` for tiny test widths."""
    return nn.GroupNorm(num_groups=min(groups, channels), num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """Pre-activation residual block: (GroupNorm -> SiLU -> conv3x3) x 2 with a 1x1 shortcut on width change."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.nin_shortcut = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention over all positions of a feature map (used at low resolution)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = group_norm(channels)
        self.q = nn.Conv2d(channels, channels, kernel_size=1)
        self.k = nn.Conv2d(channels, channels, kernel_size=1)
        self.v = nn.Conv2d(channels, channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (conv(y).flatten(2).transpose(1, 2).unsqueeze(1) for conv in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.squeeze(1).transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Halves the resolution with an asymmetrically padded stride-2 conv (as VQGAN does)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Doubles the resolution: nearest-neighbour interpolation followed by a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class MidBlock(nn.Module):
    """Residual -> attention -> residual at the bottleneck resolution."""

    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels, dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


def run_level(level: nn.Module, h: Tensor, checkpointing: bool = False) -> Tensor:
    """Runs one resolution level: its residual blocks, each followed by attention where the level has it.

    With ``checkpointing`` each block's activations are recomputed in the backward pass instead of stored.
    """
    for i, block in enumerate(level.block):
        h = call(block, h, checkpointing)
        if len(level.attn) > 0:
            h = call(level.attn[i], h, checkpointing)
    return h


def call(block: nn.Module, h: Tensor, checkpointing: bool) -> Tensor:
    """``block(h)``, through activation checkpointing when asked and gradients are being recorded."""
    if checkpointing and torch.is_grad_enabled():
        return checkpoint(block, h, use_reentrant=False)
    return block(h)


def make_level(in_channels: int, out_channels: int, num_blocks: int, with_attn: bool, dropout: float) -> nn.Module:
    """A resolution level as a plain Module with ``block`` and ``attn`` lists (checkpoint-compatible names)."""
    level = nn.Module()
    blocks, attns = nn.ModuleList(), nn.ModuleList()
    for _ in range(num_blocks):
        blocks.append(ResnetBlock(in_channels, out_channels, dropout))
        in_channels = out_channels
        if with_attn:
            attns.append(AttnBlock(out_channels))
    level.block, level.attn = blocks, attns
    return level


def nonlinear_out(norm: nn.Module, conv: nn.Module, h: Tensor) -> Tensor:
    """The GroupNorm -> SiLU -> conv head shared by encoder and decoder."""
    return conv(F.silu(norm(h)))


__all__ = [
    "AttnBlock",
    "Downsample",
    "MidBlock",
    "ResnetBlock",
    "Upsample",
    "group_norm",
    "make_level",
    "nonlinear_out",
    "call",
    "run_level",
]
