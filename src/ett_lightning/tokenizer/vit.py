"""ViT-VQGAN-style tokenizer: a timm ViT turns patches into tokens, a mirrored transformer turns them back.

The encoder is any timm ViT (``vit_base_patch16_224``, a DINO ViT, ...), built with ``pretrained=False`` unless
``encoder_weights`` names a local weights file; no hub download is attempted. Patch embedding is linear, so a
ViT tokenizer starts reconstructing colours and layout far sooner than the deep GroupNorm conv stack, which is
what the CPU demo needs.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ett_lightning.tokenizer.base import VisionTokenizer
from ett_lightning.tokenizer.blocks import call
from ett_lightning.tokenizer.quantizers import Quantizer


class ViTEncoder(nn.Module):
    """Image [B, 3, H, W] -> token map [B, width, H/p, W/p] from a timm ViT (prefix tokens such as CLS dropped).

    ``model_name`` picks the timm architecture; ``width``, ``depth`` and ``num_heads`` override its sizes (leave
    them at the model's own values when loading ``weights``, a local timm checkpoint file).
    """

    def __init__(self, model_name: str, image_size: int, patch_size: int, width: int, depth: int, num_heads: int,
                 weights: str | None = None) -> None:
        super().__init__()
        if weights is not None and not Path(weights).is_file():
            raise FileNotFoundError(f"ViT encoder weights not found: {weights}; pass a local timm checkpoint file "
                                    "or encoder_weights=None for a randomly initialised encoder")
        overlay = {"file": weights} if weights is not None else None
        import timm  # at build time: importing timm costs seconds (it imports wandb when installed)

        self.vit = timm.create_model(
            model_name, pretrained=weights is not None, pretrained_cfg_overlay=overlay, img_size=image_size,
            patch_size=patch_size, embed_dim=width, depth=depth, num_heads=num_heads, num_classes=0,
            global_pool="",
        )
        self.grid = image_size // patch_size

    @property
    def gradient_checkpointing(self) -> bool:
        return self.vit.grad_checkpointing

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, enabled: bool) -> None:
        self.vit.set_grad_checkpointing(enabled)

    def forward(self, images: Tensor) -> Tensor:
        tokens = self.vit.forward_features(images)[:, self.vit.num_prefix_tokens:]
        return tokens.transpose(1, 2).reshape(len(images), -1, self.grid, self.grid)


class ViTDecoder(nn.Module):
    """Token map [B, z, h, w] -> image [B, 3, h*p, w*p]: linear in, learned positions, timm transformer blocks,
    LayerNorm, then a linear map of each token to its p x p x 3 patch (folded back into the image)."""

    def __init__(self, z_channels: int, image_size: int, patch_size: int, width: int, depth: int,
                 num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj_in = nn.Linear(z_channels, width)
        self.pos_embed = nn.Parameter(torch.zeros(1, (image_size // patch_size) ** 2, width))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        from timm.models.vision_transformer import Block

        self.blocks = nn.Sequential(*[Block(width, num_heads, mlp_ratio, qkv_bias=True) for _ in range(depth)])
        self.norm = nn.LayerNorm(width)
        self.proj_out = nn.Linear(width, 3 * patch_size * patch_size)
        self.gradient_checkpointing = False

    @property
    def last_layer(self) -> Tensor:
        return self.proj_out.weight

    def no_weight_decay(self) -> set[str]:
        """timm's convention: the learned positions take no weight decay."""
        return {"pos_embed"}

    def forward(self, z: Tensor) -> Tensor:
        _, _, h, w = z.shape
        tokens = self.proj_in(z.flatten(2).transpose(1, 2)) + self.pos_embed
        for block in self.blocks:
            tokens = call(block, tokens, self.gradient_checkpointing)
        patches = self.proj_out(self.norm(tokens))
        p = self.patch_size
        return F.fold(patches.transpose(1, 2), output_size=(h * p, w * p), kernel_size=p, stride=p)


class ViTVQTokenizer(VisionTokenizer):
    """ViT encoder -> quantizer -> ViT decoder, one token per ``patch_size`` patch, at a fixed ``image_size``.

    ``decoder_depth`` defaults to ``depth``. ``encoder_weights``: a local timm checkpoint for the encoder;
    ``weights``: a state dict of the whole tokenizer in this package's layout.

    Args:
        quantizer: the quantizer and its codebook.
        image_size: the fixed image side.
        patch_size: pixels per token side.
        encoder_model: timm model name of the encoder architecture.
        width: transformer width of encoder and decoder.
        depth: encoder blocks.
        num_heads: attention heads.
        decoder_depth: decoder blocks (default: ``depth``).
        encoder_weights: local timm checkpoint for the encoder.
        weights: state dict of the whole tokenizer in this package's layout.
        gradient_checkpointing: recompute transformer blocks in the backward pass to save activation memory.
    """

    def __init__(
        self,
        quantizer: Quantizer,
        image_size: int = 256,
        patch_size: int = 16,
        encoder_model: str = "vit_base_patch16_224",
        width: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        decoder_depth: int | None = None,
        encoder_weights: str | None = None,
        weights: str | None = None,
        gradient_checkpointing: bool = False,
    ) -> None:
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not divisible by patch_size {patch_size}")
        arch = dict(image_size=image_size, patch_size=patch_size, encoder_model=encoder_model, width=width,
                    depth=depth, num_heads=num_heads, decoder_depth=decoder_depth or depth)
        encoder = ViTEncoder(encoder_model, image_size, patch_size, width, depth, num_heads, encoder_weights)
        decoder = ViTDecoder(width, image_size, patch_size, width, arch["decoder_depth"], num_heads)
        super().__init__(encoder, decoder, quantizer, width, patch_size, arch, gradient_checkpointing)
        if weights is not None:
            self.load_weights(weights)

    def block_classes(self) -> set[type[nn.Module]]:
        return {type(block) for block in self.decoder.blocks}

    def num_tokens(self, image_size: int) -> int:
        """The ViT has learned positions for one resolution: images must be ``arch['image_size']`` square."""
        if image_size != self.arch["image_size"]:
            raise ValueError(f"this ViT tokenizer was built for {self.arch['image_size']}px images, got "
                             f"{image_size}px; set data image_size: {self.arch['image_size']}")
        return super().num_tokens(image_size)
