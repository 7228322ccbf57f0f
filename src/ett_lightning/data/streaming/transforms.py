"""Image transforms: any PIL mode to RGB, resize + crop to a square, scale to the tokenizer's [-1, 1] range."""

from __future__ import annotations

import random

import numpy as np
from PIL import Image
from torch import Tensor


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
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "F"):
        image = image.point(lambda v: v / 256).convert("L") if image.mode != "F" else image.convert("L")
    return image.convert("RGB")


class ImageTransform:
    """Resize the short side to ``image_size`` (bicubic) and crop a square (random for training, centred
    otherwise); both are skipped when the image already has the size. Returns uint8 [S, S, 3] (PIL's own layout, no
    copy to transpose): the collator stacks these and :func:`to_model_range` scales the batch on the device."""

    def __init__(self, image_size: int, random_crop: bool = False) -> None:
        self.image_size = image_size
        self.random_crop = random_crop

    def __call__(self, image: Image.Image) -> np.ndarray:
        image = to_rgb(image)
        width, height = image.size
        scale = self.image_size / min(width, height)
        if scale != 1.0:
            size = (max(self.image_size, round(width * scale)), max(self.image_size, round(height * scale)))
            image = image.resize(size, Image.Resampling.BICUBIC)
        if image.size != (self.image_size, self.image_size):
            image = image.crop(self.crop_box(*image.size))
        return np.asarray(image, dtype=np.uint8)

    def crop_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        spare_x, spare_y = width - self.image_size, height - self.image_size
        if self.random_crop:
            left, top = random.randint(0, spare_x), random.randint(0, spare_y)
        else:
            left, top = spare_x // 2, spare_y // 2
        return left, top, left + self.image_size, top + self.image_size


def to_model_range(images: Tensor) -> Tensor:
    """uint8 [0, 255] -> float32 [-1, 1], the tokenizer's input range (memory layout kept)."""
    return images.float().div_(127.5).sub_(1.0)
