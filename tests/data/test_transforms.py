import numpy as np
import pytest
import torch
from PIL import Image

from ett_lightning.data.streaming.transforms import ImageTransform, to_model_range, to_rgb


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "LA", "CMYK", "P", "I;16", "1"])
def test_every_mode_becomes_rgb(mode):
    assert to_rgb(Image.new(mode, (8, 8))).mode == "RGB"


def test_transparent_pixels_become_background_not_black():
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert to_rgb(image).getpixel((0, 0)) == (255, 255, 255)
    palette = Image.new("RGBA", (4, 4), (0, 0, 0, 0)).convert("P")
    palette.info["transparency"] = 0
    assert to_rgb(palette).getpixel((0, 0)) == (255, 255, 255)


def test_transform_resizes_crops_and_batches_scale_to_minus_one_one():
    image = Image.new("RGB", (80, 40), (255, 0, 0))
    pixels = ImageTransform(32)(image)
    assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8
    out = to_model_range(torch.from_numpy(pixels.copy()).permute(2, 0, 1))
    assert out.dtype == torch.float32
    assert torch.allclose(out[0], torch.ones(32, 32)) and torch.allclose(out[1], -torch.ones(32, 32))
