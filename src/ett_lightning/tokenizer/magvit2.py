"""The Open-MAGVIT2 tokenizer (SEED-Voken's "improved VQGAN" around a lookup-free quantizer), with the submodule
names of its released checkpoints, so they load key for key.

It differs from the taming VQGAN (:mod:`ett_lightning.tokenizer.vq_tokenizer`): residual blocks without conv biases
and no attention, a strided 3x3 conv to downsample, a conv + depth-to-space to upsample, an adaptive group norm
before each decoder level whose scale and shift come from the per-channel standard deviation and mean of the
quantized grid, and no ``quant_conv`` / ``post_quant_conv``: the encoder writes the quantizer's channels directly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from ett_lightning.tokenizer.base import VisionTokenizer
from ett_lightning.tokenizer.blocks import call, group_norm, nonlinear_out
from ett_lightning.tokenizer.quantizers import Quantizer


class MAGVIT2ResBlock(nn.Module):
    """(GroupNorm -> SiLU -> conv3x3) x 2, convs without bias, a bias-free 1x1 shortcut on width change."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.norm2 = group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.nin_shortcut = (nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
                             if in_channels != out_channels else nn.Identity())

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return self.nin_shortcut(x) + self.conv2(F.silu(self.norm2(h)))


class AdaptiveGroupNorm(nn.Module):
    """GroupNorm without affine weights, then ``gamma(std(q)) * x + beta(mean(q))``: the scale and shift are linear in
    the per-channel standard deviation (unbiased variance + eps, square root) and mean of the quantized grid ``q``."""

    def __init__(self, z_channels: int, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.gn = nn.GroupNorm(min(32, channels), channels, eps=eps, affine=False)
        self.gamma = nn.Linear(z_channels, channels)
        self.beta = nn.Linear(z_channels, channels)
        self.eps = eps

    def forward(self, x: Tensor, quantized: Tensor) -> Tensor:
        flat = quantized.flatten(2)
        scale = self.gamma((flat.var(dim=-1) + self.eps).sqrt())
        shift = self.beta(flat.mean(dim=-1))
        return self.gn(x) * scale[..., None, None] + shift[..., None, None]


class Upsampler(nn.Module):
    """Doubles the resolution: a 3x3 conv to four times the channels, then depth-to-space in DCR order (channel
    ``(i * 2 + j) * C + c`` becomes pixel ``(2h + i, 2w + j)`` of channel ``c``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels * 4, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(x)
        b, c4, h, w = out.shape
        c = c4 // 4
        return out.view(b, 2, 2, c, h, w).permute(0, 3, 4, 1, 5, 2).reshape(b, c, h * 2, w * 2)


def make_level(in_channels: int, out_channels: int, num_blocks: int) -> nn.Module:
    level = nn.Module()
    level.block = nn.ModuleList(MAGVIT2ResBlock(in_channels if i == 0 else out_channels, out_channels)
                                for i in range(num_blocks))
    return level


class MAGVIT2Encoder(nn.Module):
    """Image [B, 3, H, W] -> latent [B, z_channels, H/f, W/f]; each ``ch_mult`` entry after the first halves the
    side."""

    def __init__(self, ch: int, ch_mult: Sequence[int], num_res_blocks: int, z_channels: int) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(3, ch, kernel_size=3, padding=1, bias=False)
        self.down = nn.ModuleList()
        widths = [ch * mult for mult in (1, *ch_mult)]
        for i in range(len(ch_mult)):
            level = make_level(widths[i], widths[i + 1], num_res_blocks)
            if i < len(ch_mult) - 1:
                level.downsample = nn.Conv2d(widths[i + 1], widths[i + 1], kernel_size=3, stride=2, padding=1)
            self.down.append(level)
        self.mid_block = nn.ModuleList(MAGVIT2ResBlock(widths[-1], widths[-1]) for _ in range(num_res_blocks))
        self.norm_out = group_norm(widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], z_channels, kernel_size=1)
        self.gradient_checkpointing = False

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            for block in level.block:
                h = call(block, h, self.gradient_checkpointing)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        for block in self.mid_block:
            h = call(block, h, self.gradient_checkpointing)
        return nonlinear_out(self.norm_out, self.conv_out, h)


class MAGVIT2Decoder(nn.Module):
    """Quantized grid [B, z_channels, h, w] -> image; ``up[i]`` is the level of width ``ch * ch_mult[i]`` (run in
    reverse), each after ``adaptive[i]`` conditioned on the quantized grid."""

    def __init__(self, ch: int, ch_mult: Sequence[int], num_res_blocks: int, z_channels: int) -> None:
        super().__init__()
        width = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, width, kernel_size=3, padding=1)
        self.mid_block = nn.ModuleList(MAGVIT2ResBlock(width, width) for _ in range(num_res_blocks))
        levels, adaptive = [], []
        for i in reversed(range(len(ch_mult))):
            adaptive.insert(0, AdaptiveGroupNorm(z_channels, width))
            level = make_level(width, ch * ch_mult[i], num_res_blocks)
            width = ch * ch_mult[i]
            if i > 0:
                level.upsample = Upsampler(width)
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)
        self.adaptive = nn.ModuleList(adaptive)
        self.norm_out = group_norm(width)
        self.conv_out = nn.Conv2d(width, 3, kernel_size=3, padding=1)
        self.gradient_checkpointing = False

    @property
    def last_layer(self) -> Tensor:
        return self.conv_out.weight

    def forward(self, quantized: Tensor) -> Tensor:
        h = self.conv_in(quantized)
        for block in self.mid_block:
            h = call(block, h, self.gradient_checkpointing)
        for level, norm in zip(reversed(self.up), reversed(self.adaptive), strict=True):
            h = norm(h, quantized)
            for block in level.block:
                h = call(block, h, self.gradient_checkpointing)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return nonlinear_out(self.norm_out, self.conv_out, h)


class MAGVIT2Tokenizer(VisionTokenizer):
    """The Open-MAGVIT2 tokenizer: :class:`MAGVIT2Encoder` -> quantizer -> :class:`MAGVIT2Decoder`, the latent
    channels being the quantizer's ``code_dim`` (LFQ's bits). Built for a :class:`LookupFreeQuantizer` as released
    (``PretrainedVQTokenizer(path)`` loads those checkpoints); any quantizer fits.

    Args:
        quantizer: the quantizer (Open-MAGVIT2: ``LookupFreeQuantizer`` with 18 or 14 bits).
        ch: base channel count of encoder and decoder.
        ch_mult: channel multiplier per level; the image is downsampled ``2 ** (len(ch_mult) - 1)``-fold.
        num_res_blocks: residual blocks per level and in the middle.
        resolution: the image side the tokenizer is trained at (recorded; the convolutions take any multiple of
            the downsampling factor).
        weights: state dict in this layout (safetensors or torch pickle), loaded strictly.
        gradient_checkpointing: recompute residual blocks in the backward pass to save activation memory.
        channels_last: run the convolutions in channels-last memory format.
    """

    def __init__(self, quantizer: Quantizer, ch: int = 128, ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
                 num_res_blocks: int = 4, resolution: int = 256, weights: str | None = None,
                 gradient_checkpointing: bool = False, channels_last: bool = False) -> None:
        arch = dict(ch=ch, ch_mult=tuple(ch_mult), num_res_blocks=num_res_blocks, resolution=resolution)
        z = quantizer.code_dim
        super().__init__(MAGVIT2Encoder(ch, ch_mult, num_res_blocks, z), MAGVIT2Decoder(ch, ch_mult, num_res_blocks, z),
                         quantizer, z, 2 ** (len(ch_mult) - 1), arch, gradient_checkpointing, channels_last,
                         latent_convs=False)
        if weights is not None:
            self.load_weights(weights)

    def block_classes(self) -> set[type[nn.Module]]:
        return {MAGVIT2ResBlock}
