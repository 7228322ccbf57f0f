"""What every vision tokenizer ETT tunes shares: encoder -> quantizer -> codebook embeddings, decoder back."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ett_lightning.checkpoints.files import load_state_dict_file
from ett_lightning.tokenizer.quantizers import Quantizer
from ett_lightning.utils import load_strict


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


class VisionTokenizer(nn.Module):
    """Encoder [B, 3, H, W] -> [B, z, H/f, W/f] -> 1x1 ``quant_conv`` -> quantizer -> 1x1 ``post_quant_conv``
    -> decoder -> [B, 3, H, W], with the submodule names the public VQGAN-family checkpoints use.

    Subclasses choose the encoder and decoder (conv :class:`VQTokenizer`, ViT :class:`ViTVQTokenizer`) and
    record the constructor's architecture arguments in ``arch``: export rebuilds the tokenizer as
    ``<subclass>(quantizer, **arch)``. ``gradient_checkpointing`` recomputes each encoder / decoder block's
    activations in the backward pass instead of storing them (less memory, about a third more compute).
    ``channels_last`` stores the conv weights NHWC, the layout GPU tensor-core convolutions run in, so no
    layout conversion happens around each convolution (the collated images already have NHWC strides).
    Without ``latent_convs`` (Open-MAGVIT2) the encoder writes the quantizer's channels and the decoder reads them:
    ``quant_conv`` and ``post_quant_conv`` are identities.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, quantizer: Quantizer, z_channels: int,
                 downsample_factor: int, arch: dict[str, Any], gradient_checkpointing: bool = False,
                 channels_last: bool = False, latent_convs: bool = True) -> None:
        super().__init__()
        encoder.gradient_checkpointing = decoder.gradient_checkpointing = gradient_checkpointing
        self.arch = arch
        self.encoder = encoder
        self.decoder = decoder
        if not latent_convs and z_channels != quantizer.code_dim:
            raise ValueError(f"without latent convs the encoder's {z_channels} channels must equal the quantizer's "
                             f"code_dim {quantizer.code_dim}")
        self.quant_conv = nn.Conv2d(z_channels, quantizer.code_dim, 1) if latent_convs else nn.Identity()
        self.quantize = quantizer
        self.post_quant_conv = nn.Conv2d(quantizer.code_dim, z_channels, 1) if latent_convs else nn.Identity()
        self.downsample_factor = downsample_factor
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def rebuild_class(self) -> type[VisionTokenizer]:
        """The class whose ``(quantizer, **arch)`` constructor rebuilds this tokenizer from an export."""
        return type(self)

    def load_weights(self, path: str) -> None:
        """Loads a state dict in this package's layout (safetensors or torch pickle) strictly."""
        load_strict(self, load_state_dict_file(path), path)

    def block_classes(self) -> set[type[nn.Module]]:
        """The repeated blocks of encoder and decoder: the units FSDP2 shards (``FSDP2Strategy``)."""
        return set()

    @property
    def last_layer(self) -> Tensor:
        """The decoder's last weight: where the adversarial loss balances its gradient against reconstruction's."""
        return self.decoder.last_layer

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
            raise TypeError(f"{type(self).__name__}.encode expects float images in [-1, 1], got {images.dtype}; "
                            "scale uint8 pixels with ett_lightning.data.streaming.transforms.to_model_range "
                            "(ETTBatch.normalized)")
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

    def embed_indices(self, indices: Tensor) -> Tensor:
        """Codebook indices [B, N] -> their codebook embeddings [B, N, D] (what ``encode`` returns for them). The
        indices must lie in ``[0, codebook_size)``, unchecked here (generation calls this once per token); indices
        from elsewhere go through :meth:`decode_indices`, which checks them."""
        return self.quantize.embed(indices)

    def decode_indices(self, indices: Tensor) -> Tensor:
        """Codebook indices [B, N] -> images, for generation and for codes from elsewhere (a token file, another
        tokenizer's codes): indices that are not integers in ``[0, codebook_size)`` are refused, since the bit and
        level arithmetic of LFQ and FSQ would turn them into some other code."""
        if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
            raise ValueError(f"code indices must be integers, got a tensor of {indices.dtype}")
        low, high = (int(indices.min()), int(indices.max())) if indices.numel() else (0, 0)  # as Python ints: a
        if low < 0 or high >= self.codebook_size:  # comparison in uint8 or int16 would wrap the codebook size
            raise ValueError(f"code indices must lie in [0, {self.codebook_size}) for this tokenizer's codebook, got "
                             f"{low} .. {high}")
        return self.decode(self.embed_indices(indices.long()))

    def forward(self, images: Tensor) -> tuple[Tensor, TokenizerOutput]:
        """Reconstruction and the encode output, for tokenizer pre-training and evaluation."""
        out = self.encode(images)
        return self.decode(out.embeddings), out


def code_histogram(indices: Tensor, codebook_size: int, dtype: torch.dtype = torch.float) -> Tensor:
    """How often each code occurs in ``indices``, as a [codebook_size] tensor of ``dtype``.

    A scatter-add, not ``torch.bincount``: on CUDA bincount reads the largest index back to the host to size its
    output, which would stall every training step.
    """
    flat = indices.flatten().long()
    ones = torch.ones_like(flat, dtype=dtype)
    return torch.zeros(codebook_size, dtype=dtype, device=flat.device).index_add_(0, flat, ones)


def histogram_statistics(counts: Tensor) -> dict[str, Tensor]:
    """A code histogram's ``usage`` (fraction of codes used), ``entropy`` of the code frequencies (nats) and
    ``perplexity`` (exp of it: the codebook size when every code is used equally), in the histogram's dtype, on
    its device (nothing read back)."""
    probs = counts / counts.sum().clamp_min(1)
    entropy = -(probs * torch.log(probs.clamp_min(torch.finfo(probs.dtype).tiny))).sum()
    return {"usage": (counts > 0).to(probs.dtype).mean(), "entropy": entropy, "perplexity": entropy.exp()}


@torch.no_grad()
def codebook_stats(indices: Tensor, codebook_size: int) -> dict[str, Tensor]:
    """Fraction of the codebook used by ``indices`` and the perplexity of their histogram."""
    stats = histogram_statistics(code_histogram(indices, codebook_size))
    return {"codebook_usage": stats["usage"], "codebook_perplexity": stats["perplexity"]}
