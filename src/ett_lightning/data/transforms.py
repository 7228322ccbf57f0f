"""Image transforms: any PIL mode to RGB, resize + crop to a square, scale to the tokenizer's [-1, 1] range."""

from __future__ import annotations

import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms import v2


def to_rgb(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """RGB for every mode: transparency (RGBA, LA, palette with transparency) is composited onto ``background``
    instead of turning black; grayscale, CMYK, 16-bit and palette images convert directly."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, background)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    if image.mode in ("I", "I;16", "F"):
        image = image.point(lambda v: v / 256).convert("L") if image.mode != "F" else image.convert("L")
    return image.convert("RGB")


class ImageTransform:
    """Resize the short side to ``image_size``, crop a square (random for training), map to [-1, 1] float."""

    def __init__(self, image_size: int, random_crop: bool = False) -> None:
        crop = v2.RandomCrop(image_size) if random_crop else v2.CenterCrop(image_size)
        self.pipeline = v2.Compose([
            v2.PILToTensor(),
            v2.Resize(image_size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
            crop,
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5]),
        ])

    def __call__(self, image: Image.Image) -> Tensor:
        return self.pipeline(to_rgb(image)).clamp_(-1.0, 1.0)
