"""Dead-code restart: codes nothing chose lately get the value of a recent encoder output, as
vector-quantize-pytorch's ``threshold_ema_dead_code`` does for EMA codebooks, here for trained ones."""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor

from ett_lightning.tokenizer.quantizers import Quantizer


@torch.no_grad()
def restart_dead_codes(quantizer: Quantizer, counts: Tensor, latents: Tensor, dead_below: int,
                       strategy: L.pytorch.strategies.Strategy, seed: int) -> int:
    """Sets every code used fewer than ``dead_below`` times (``counts``, the same on every rank) to a latent drawn
    from ``latents`` ([B, D, H, W], the quantizer's last input) on rank 0 and sent to every rank, so the ranks'
    codebooks stay equal: distinct latents while there are enough (two equal codes would leave the second one dead
    again), drawn with ``seed`` (the step). A codebook sharded by FSDP2 is gathered, changed and sharded again.
    Returns how many codes were restarted. Their optimizer moments are kept: a code that no token chose had no
    gradient to build them."""
    dead = (counts < dead_below).nonzero().flatten().cpu()
    if not len(dead):
        return 0
    flat = quantizer.flatten_latents(latents.detach())
    generator = torch.Generator().manual_seed(seed)
    picks = (torch.randperm(len(flat), generator=generator)[: len(dead)] if len(dead) <= len(flat)
             else torch.randint(len(flat), (len(dead),), generator=generator))
    fresh = strategy.broadcast(flat[picks.to(flat.device)].cpu(), src=0)
    weight = quantizer.embedding.weight
    if hasattr(weight, "full_tensor"):
        from torch.distributed.tensor import distribute_tensor

        whole = weight.full_tensor()
        whole[dead.to(whole.device)] = fresh.to(whole)
        weight.copy_(distribute_tensor(whole, weight.device_mesh, weight.placements))
    else:
        weight[dead.to(weight.device)] = fresh.to(weight)
    return len(dead)
