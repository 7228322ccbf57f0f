"""The VQGAN-family convolutional tokenizer (taming, LlamaGen and SEED-Voken/IBQ architecture)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ett_lightning.tokenizer.base import VisionTokenizer
from ett_lightning.tokenizer.blocks import AttnBlock, ResnetBlock
from ett_lightning.tokenizer.decoder import Decoder
from ett_lightning.tokenizer.encoder import Encoder
from ett_lightning.tokenizer.quantizers import Quantizer


class VQTokenizer(VisionTokenizer):
    """VQGAN-family tokenizer with a pluggable quantizer.

    Submodule names (``encoder``, ``quant_conv``, ``quantize``, ``post_quant_conv``, ``decoder``) are the ones
    taming-transformers, LlamaGen and SEED-Voken use, so their checkpoints load by name
    (:class:`~ett_lightning.tokenizer.PretrainedVQTokenizer` maps the layouts that differ).
    The downsampling factor is ``2 ** (len(ch_mult) - 1)``: 8 for four levels, 16 for five. ``weights`` loads
    a state dict in this layout (safetensors or torch pickle) strictly, reporting any mismatched keys.

    Args:
        quantizer: the quantizer and its codebook (VectorQuantizer, IndexBackpropQuantizer).
        ch: base channel count of encoder and decoder.
        ch_mult: channel multiplier per resolution level; the image is downsampled ``2 ** (len(ch_mult) - 1)``-fold.
        num_res_blocks: residual blocks per level.
        attn_resolutions: feature-map sides at which self-attention blocks are added.
        resolution: the image side the architecture is built for.
        z_channels: channels of the latent before ``quant_conv``.
        dropout: dropout in the residual blocks.
        weights: state dict in this layout (safetensors or torch pickle), loaded strictly.
        gradient_checkpointing: recompute encoder and decoder blocks in the backward pass to save activation memory.
        channels_last: run the convolutions in channels-last memory format.
    """

    def __init__(
        self,
        quantizer: Quantizer,
        ch: int = 128,
        ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (16,),
        resolution: int = 256,
        z_channels: int = 256,
        dropout: float = 0.0,
        weights: str | None = None,
        gradient_checkpointing: bool = False,
        channels_last: bool = False,
    ) -> None:
        arch = dict(ch=ch, ch_mult=tuple(ch_mult), num_res_blocks=num_res_blocks, resolution=resolution,
                    attn_resolutions=tuple(attn_resolutions), z_channels=z_channels, dropout=dropout)
        super().__init__(Encoder(**arch), Decoder(**arch), quantizer, z_channels, 2 ** (len(ch_mult) - 1), arch,
                         gradient_checkpointing, channels_last)
        if weights is not None:
            self.load_weights(weights)

    def block_classes(self) -> set[type[nn.Module]]:
        return {ResnetBlock, AttnBlock}
