"""IBQ's objective as SEED-Voken trains it: values and gradients (latents and codebook) against a transcription of
its ``IndexPropagationQuantize`` formula (kept here, written from the published formula: a one-hot straight-through
over the softmax of latent-code dot products, and three squared errors) and of its entropy loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ett_lightning.tokenizer import IndexBackpropQuantizer


def seed_voken_ibq(z: torch.Tensor, codebook: torch.Tensor, beta: float, entropy_temperature: float | None = None):
    """SEED-Voken's training-mode loss on latents [B, D, H, W]: z_q from (hard - sg(soft) + soft) @ E,
    mean((z_q - z)^2) + mean((sg(z_q_hard) - z)^2) + beta * mean((z_q_hard - sg(z))^2); with a temperature, plus
    its entropy loss (sample entropy minus the entropy of the mean distribution, log(mean + 1e-5))."""
    logits = torch.einsum("bdhw,nd->bnhw", z, codebook)
    soft = logits.softmax(dim=1)
    hard = torch.zeros_like(logits).scatter_(1, soft.argmax(dim=1, keepdim=True), 1.0)
    z_q = torch.einsum("bnhw,nd->bdhw", hard - soft.detach() + soft, codebook)
    z_q_hard = torch.einsum("bnhw,nd->bdhw", hard, codebook)
    loss = (((z_q - z) ** 2).mean() + ((z_q_hard.detach() - z) ** 2).mean()
            + ((z_q_hard - z.detach()) ** 2).mean() * beta)
    if entropy_temperature is not None:
        flat = logits.permute(0, 2, 3, 1).reshape(-1, codebook.shape[0]) / entropy_temperature
        probs, log_probs = flat.softmax(-1), flat.log_softmax(-1)
        mean = probs.mean(0)
        loss = loss + (-(probs * log_probs).sum(-1).mean() + (mean * torch.log(mean + 1e-5)).sum())
    return loss, z_q


@pytest.mark.parametrize("entropy", [False, True], ids=["plain", "entropy"])
def test_ibq_objective_and_gradients_equal_seed_vokens(entropy):
    torch.manual_seed(0)
    quantizer = IndexBackpropQuantizer(256, 8, beta=0.25, entropy_weight=1.0 if entropy else 0.0,
                                       entropy_temperature=0.5)
    torch.nn.init.normal_(quantizer.embedding.weight)
    z = torch.randn(2, 8, 4, 4, requires_grad=True)
    out = quantizer(z)
    ours = torch.autograd.grad(out.losses["quantizer"], [z, quantizer.embedding.weight])

    codebook = quantizer.embedding.weight.detach().clone().requires_grad_(True)
    z_ref = z.detach().clone().requires_grad_(True)
    loss, z_q = seed_voken_ibq(z_ref, codebook, 0.25, 0.5 if entropy else None)
    theirs = torch.autograd.grad(loss, [z_ref, codebook])
    torch.testing.assert_close(out.quantized, z_q, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.losses["quantizer"], loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours[0], theirs[0], rtol=1e-4, atol=1e-7)  # to the encoder
    torch.testing.assert_close(ours[1], theirs[1], rtol=1e-4, atol=1e-7)  # to the codebook


def test_the_codebook_term_reaches_no_encoder_and_the_commitment_term_no_code():
    torch.manual_seed(0)
    quantizer = IndexBackpropQuantizer(64, 8)
    z = torch.randn(2, 8, 4, 4, requires_grad=True)
    losses = quantizer(z).losses
    assert torch.autograd.grad(losses["codebook"], z, allow_unused=True)[0] is None
    assert torch.autograd.grad(losses["commitment"], quantizer.embedding.weight, allow_unused=True)[0] is None
    flat = z.detach().permute(0, 2, 3, 1).reshape(-1, 8)
    codes = quantizer.embedding.weight.detach()[(flat @ quantizer.embedding.weight.detach().t()).argmax(1)]
    assert losses["codebook"].item() == pytest.approx(F.mse_loss(codes, flat).item(), rel=1e-6)
