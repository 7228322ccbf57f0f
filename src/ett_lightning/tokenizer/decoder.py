"""VQGAN-family convolutional decoder: latent [B, z_channels, h, w] -> image [B, 3, h*f, w*f]."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ett_lightning.tokenizer.blocks import MidBlock, Upsample, call, group_norm, make_level, nonlinear_out, run_level


class Decoder(nn.Module):
    """Mirror of :class:`Encoder` with ``num_res_blocks + 1`` blocks per level.

    ``up[i]`` holds the level of width ``ch * ch_mult[i]``, so ``up`` is indexed like the encoder's ``down``
    (the taming layout) and runs in reverse order.
    """

    def __init__(
        self,
        ch: int = 128,
        ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (16,),
        out_ch: int = 3,
        resolution: int = 256,
        z_channels: int = 256,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        width = ch * ch_mult[-1]
        size = resolution // 2 ** (len(ch_mult) - 1)
        self.conv_in = nn.Conv2d(z_channels, width, kernel_size=3, padding=1)
        self.mid = MidBlock(width, dropout)
        levels = []
        for i in reversed(range(len(ch_mult))):
            level = make_level(width, ch * ch_mult[i], num_res_blocks + 1, size in attn_resolutions, dropout)
            width = ch * ch_mult[i]
            if i != 0:
                level.upsample = Upsample(width)
                size *= 2
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)
        self.norm_out = group_norm(width)
        self.conv_out = nn.Conv2d(width, out_ch, kernel_size=3, padding=1)
        self.gradient_checkpointing = False

    @property
    def last_layer(self) -> Tensor:
        return self.conv_out.weight

    def forward(self, z: Tensor) -> Tensor:
        h = call(self.mid, self.conv_in(z), self.gradient_checkpointing)
        for level in reversed(self.up):
            h = run_level(level, h, self.gradient_checkpointing)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return nonlinear_out(self.norm_out, self.conv_out, h)
