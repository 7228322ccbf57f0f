"""Fixed probe images and what the starting tokenizer made of them: the yardstick for how far tuning moves it."""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics.functional.image import structural_similarity_index_measure

from ett_lightning.callbacks.reconstruction import to_unit
from ett_lightning.data.streaming.transforms import to_model_range
from ett_lightning.health.code_window import code_statistics
from ett_lightning.tokenizer.base import code_histogram
from ett_lightning.user_errors import UserError


@contextmanager
def evaluation_mode(module: nn.Module):
    """``module`` in eval mode (no dropout, frozen norm statistics) for the block, each submodule's mode restored."""
    modes = {submodule: submodule.training for submodule in module.modules()}
    module.eval()
    try:
        yield
    finally:
        for submodule, training in modes.items():
            submodule.training = training


class ProbeImages:
    """Images chosen once per run, kept as uint8 with the run's checkpoints, and the starting tokenizer's codes,
    PSNR and SSIM on them. Each :meth:`compare` encodes and decodes them again and says how far the tokenizer has
    moved: the share of token positions whose code changed, PSNR and SSIM against the images (and their drop from
    the start), and the codebook statistics of the probe codes.
    """

    def __init__(self, images: Tensor, start: dict[str, Any], chunk: int = 16) -> None:
        self.images = images
        self.start = start
        self.chunk = chunk

    @classmethod
    def choose(cls, images: Tensor, tokenizer: nn.Module, chunk: int = 16) -> ProbeImages:
        """Probes from images [N, 3, H, W] (uint8, or floats in the model's [-1, 1]), measured with ``tokenizer`` as
        it is now."""
        pixels = images.detach().cpu()
        if pixels.is_floating_point():
            pixels = ((pixels.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
        probes = cls(pixels, {}, chunk)
        indices, psnr, ssim = probes.encode_decode(tokenizer)
        probes.start = {"indices": indices.cpu(), "psnr": psnr.mean().item(), "ssim": ssim.mean().item(),
                        **code_statistics(code_histogram(indices, tokenizer.codebook_size, torch.int64))}
        return probes

    @torch.no_grad()
    def encode_decode(self, tokenizer: nn.Module) -> tuple[Tensor, Tensor, Tensor]:
        """(code indices [N, T], PSNR [N], SSIM [N]) of the probes through ``tokenizer`` in eval mode."""
        device = next(tokenizer.parameters()).device
        indices, psnr, ssim = [], [], []
        with evaluation_mode(tokenizer):
            for part in self.images.split(self.chunk):
                images = to_model_range(part.to(device))
                reconstructions, encoded = tokenizer(images)
                target, prediction = to_unit(images), to_unit(reconstructions)
                mse = (prediction.double() - target.double()).pow(2).flatten(1).mean(1).clamp_min(1e-12)
                psnr.append(10.0 * torch.log10(1.0 / mse))
                ssim.append(structural_similarity_index_measure(prediction, target, data_range=1.0,
                                                                reduction="none"))
                indices.append(encoded.indices.flatten(1))
        return torch.cat(indices), torch.cat(psnr).float(), torch.cat(ssim).float()

    def compare(self, tokenizer: nn.Module) -> dict[str, float]:
        """The probes' health now, against the start."""
        indices, psnr, ssim = self.encode_decode(tokenizer)
        now = code_statistics(code_histogram(indices, tokenizer.codebook_size, torch.int64))
        start = self.start
        return {"probe_index_flips": float((indices.cpu() != start["indices"]).double().mean()),
                "probe_psnr": psnr.mean().item(), "probe_psnr_drop": start["psnr"] - psnr.mean().item(),
                "probe_ssim": ssim.mean().item(), "probe_ssim_drop": start["ssim"] - ssim.mean().item(),
                "probe_usage": now["usage"], "probe_usage_ratio": now["usage"] / max(start["usage"], 1e-12),
                "probe_perplexity": now["perplexity"],
                "probe_perplexity_ratio": now["perplexity"] / max(start["perplexity"], 1e-12)}

    def state_dict(self) -> dict[str, Any]:
        return {"images": self.images, "start": self.start}

    @classmethod
    def from_state(cls, state: Any, tokenizer: nn.Module, limit: int, chunk: int = 16) -> ProbeImages:
        """Probes saved in a checkpoint, refused with a :class:`UserError` unless they are at most ``limit`` uint8
        images the tokenizer reads, with the start's integer codes for each of its tokens and finite start figures
        (usage and perplexity above 0): a checkpoint is untrusted input."""
        images, start = (state.get("images"), state.get("start")) if isinstance(state, dict) else (None, None)
        figures = ("psnr", "ssim", "usage", "perplexity")
        problem = None
        if not (isinstance(images, Tensor) and images.dtype == torch.uint8 and images.ndim == 4
                and images.shape[1] == 3 and 1 <= len(images) <= limit and images.shape[2] == images.shape[3]):
            problem = f"images must be 1 to {limit} uint8 images [N, 3, H, H]"
        elif not (isinstance(start, dict) and set(figures) | {"indices"} <= set(start)
                  and all(isinstance(start[k], float) and math.isfinite(start[k]) for k in figures)
                  and start["usage"] > 0 and start["perplexity"] > 0):
            problem = "the start's PSNR, SSIM, usage and perplexity must be finite numbers (usage, perplexity > 0)"
        elif not valid_indices(start["indices"], len(images), tokenizer, images.shape[2]):
            problem = "the start's codes must be integers [N, tokens] for the tokenizer's input size"
        if problem:
            raise UserError(f"the checkpoint's tokenizer-health probes are malformed: {problem}")
        return cls(images.contiguous().clone(), start, chunk)


def valid_indices(indices: Any, count: int, tokenizer: nn.Module, side: int) -> bool:
    """``indices`` are [count, tokens] integers within the codebook, for ``side`` x ``side`` images the tokenizer
    reads (a ViT tokenizer reads its one ``image_size``)."""
    expected = getattr(tokenizer, "arch", {}).get("image_size")
    if expected is not None and expected != side:
        return False
    try:
        tokens = tokenizer.num_tokens(side)
    except ValueError:
        return False
    return (isinstance(indices, Tensor) and not indices.is_floating_point() and not indices.is_complex()
            and tuple(indices.shape) == (count, tokens)
            and bool(((indices >= 0) & (indices < tokenizer.codebook_size)).all()))
