"""The vision tokenizer ETT tunes: encoder -> quantizer -> codebook embeddings, and a decoder back to pixels."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ett_lightning.tokenizer.decoder import Decoder
from ett_lightning.tokenizer.encoder import Encoder
from ett_lightning.tokenizer.quantizers import Quantizer
from ett_lightning.utils import load_state_dict_file, load_strict


@dataclass
class TokenizerOutput:
    """What the LLM side and the VQ loss need from one encode.

    ``embeddings`` [B, N, D]: the selected codebook embeddings in raster order, with a gradient path to the
    encoder (and, depending on the quantizer, the codebook). ``indices`` [B, N]. ``quant_losses``: the
    quantizer's loss terms. ``stats``: batch codebook usage (fraction of codes hit) and perplexity.
    """

    embeddings: Tensor
    indices: Tensor
    quant_losses: dict[str, Tensor]
    stats: dict[str, Tensor]


class VQTokenizer(nn.Module):
    """VQGAN-family tokenizer with a pluggable quantizer.

    Submodule names (``encoder``, ``quant_conv``, ``quantize``, ``post_quant_conv``, ``decoder``) are the ones
    taming-transformers, LlamaGen and SEED-Voken use, so their checkpoints load by name
    (:class:`~ett_lightning.tokenizer.PretrainedVQTokenizer` maps the layouts that differ). ``arch`` keeps the
    constructor's architecture arguments, which export writes next to the weights.
    The downsampling factor is ``2 ** (len(ch_mult) - 1)``: 8 for four levels, 16 for five. ``weights`` loads
    a state dict in this layout (safetensors or torch pickle) strictly, reporting any mismatched keys.
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
    ) -> None:
        super().__init__()
        arch = dict(ch=ch, ch_mult=tuple(ch_mult), num_res_blocks=num_res_blocks, resolution=resolution,
                    attn_resolutions=tuple(attn_resolutions), z_channels=z_channels, dropout=dropout)
        self.arch = arch
        self.encoder = Encoder(**arch)
        self.decoder = Decoder(**arch)
        self.quant_conv = nn.Conv2d(z_channels, quantizer.code_dim, kernel_size=1)
        self.quantize = quantizer
        self.post_quant_conv = nn.Conv2d(quantizer.code_dim, z_channels, kernel_size=1)
        self.downsample_factor = 2 ** (len(ch_mult) - 1)
        if weights is not None:
            load_strict(self, load_state_dict_file(weights), weights)

    @property
    def code_dim(self) -> int:
        return self.quantize.code_dim

    @property
    def codebook_size(self) -> int:
        return self.quantize.codebook_size

    def num_tokens(self, image_size: int) -> int:
        """Number of image tokens for a square ``image_size`` input."""
        if image_size % self.downsample_factor:
            raise ValueError(
                f"image_size {image_size} is not divisible by the tokenizer's downsampling factor "
                f"{self.downsample_factor}; use a multiple of {self.downsample_factor}"
            )
        return (image_size // self.downsample_factor) ** 2

    def encode(self, images: Tensor) -> TokenizerOutput:
        """Images in [-1, 1], [B, 3, H, W] -> codebook embeddings [B, (H/f)*(W/f), D] and the rest."""
        if not images.is_floating_point():
            raise TypeError(f"VQTokenizer.encode expects float images in [-1, 1], got {images.dtype}; scale uint8 "
                            "pixels with ett_lightning.data.transforms.to_model_range (ETTBatch.normalized)")
        quant = self.quantize(self.quant_conv(self.encoder(images)))
        embeddings = quant.quantized.flatten(2).transpose(1, 2)
        indices = quant.indices.flatten(1)
        return TokenizerOutput(embeddings, indices, quant.losses, codebook_stats(indices, self.codebook_size))

    def decode(self, embeddings: Tensor) -> Tensor:
        """Codebook embeddings [B, N, D] on a square grid -> images [B, 3, H, W]."""
        b, n, d = embeddings.shape
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"decode expects a square token grid, got N={n} tokens")
        grid = embeddings.transpose(1, 2).reshape(b, d, side, side).contiguous()
        return self.decoder(self.post_quant_conv(grid))

    def decode_indices(self, indices: Tensor) -> Tensor:
        """Codebook indices [B, N] -> images, for generation."""
        return self.decode(self.quantize.embed(indices))

    def forward(self, images: Tensor) -> tuple[Tensor, TokenizerOutput]:
        """Reconstruction and the encode output, for tokenizer pre-training and evaluation."""
        out = self.encode(images)
        return self.decode(out.embeddings), out


@torch.no_grad()
def codebook_stats(indices: Tensor, codebook_size: int) -> dict[str, Tensor]:
    """Fraction of the codebook used by ``indices`` and the perplexity of their histogram."""
    counts = torch.bincount(indices.flatten(), minlength=codebook_size).float()
    probs = counts / counts.sum()
    entropy = -(probs * torch.log(probs.clamp_min(1e-12))).sum()
    return {"codebook_usage": (counts > 0).float().mean(), "codebook_perplexity": entropy.exp()}
