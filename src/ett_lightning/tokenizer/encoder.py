"""VQGAN-family convolutional encoder: image [B, 3, H, W] -> latent [B, z_channels, H/f, W/f]."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ett_lightning.tokenizer.blocks import Downsample, MidBlock, call, group_norm, make_level, nonlinear_out, run_level


class Encoder(nn.Module):
    """Residual conv encoder; each entry of ``ch_mult`` after the first halves the resolution.

    ``attn_resolutions`` lists the feature-map sizes (in pixels) at which attention is added, as in VQGAN.
    """

    def __init__(
        self,
        ch: int = 128,
        ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (16,),
        in_channels: int = 3,
        resolution: int = 256,
        z_channels: int = 256,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, ch, kernel_size=3, padding=1)
        self.down = nn.ModuleList()
        in_mult = (1, *ch_mult)
        size = resolution
        for i, mult in enumerate(ch_mult):
            level = make_level(ch * in_mult[i], ch * mult, num_res_blocks, size in attn_resolutions, dropout)
            if i != len(ch_mult) - 1:
                level.downsample = Downsample(ch * mult)
                size //= 2
            self.down.append(level)
        width = ch * ch_mult[-1]
        self.mid = MidBlock(width, dropout)
        self.norm_out = group_norm(width)
        self.conv_out = nn.Conv2d(width, z_channels, kernel_size=3, padding=1)
        self.gradient_checkpointing = False

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = run_level(level, h, self.gradient_checkpointing)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        return nonlinear_out(self.norm_out, self.conv_out, call(self.mid, h, self.gradient_checkpointing))
