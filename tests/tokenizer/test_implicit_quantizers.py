"""Implicit-codebook quantizers against their references: LookupFreeQuantizer against vector-quantize-pytorch's
``LFQ`` (a dependency: codes, commitment, entropies and gradients where the two agree, indices in the opposite bit
order) and against a transcription of Open-MAGVIT2's objective (written from its published formula: the entropies of
``softmax(2 z.c / T)``, the batch one with ``log(mean + 1e-5)``); FiniteScalarQuantizer against vector-quantize-
pytorch's ``FSQ``, which it wraps."""

from __future__ import annotations

import pytest
import torch
from vector_quantize_pytorch import FSQ, LFQ

from ett_lightning.tokenizer import FiniteScalarQuantizer, LookupFreeQuantizer


def open_magvit2_objective(z: torch.Tensor, bits: int, temperature: float = 0.01) -> tuple[torch.Tensor, ...]:
    """Open-MAGVIT2's LFQ training loss on latents [B, D, H, W]: per-token entropy minus batch entropy of
    softmax(2 z.c / T) over the 2**bits +-1 codes (bit d of code i is bit d of i), its log of the mean taken with
    +1e-5; commitment mean((z - sg(sign))^2); weighted 0.1 and 0.25 as its loss config does."""
    flat = z.permute(0, 2, 3, 1).reshape(-1, bits)
    codes = ((torch.arange(2**bits)[:, None] >> torch.arange(bits)) & 1).float() * 2 - 1
    logits = 2 * flat @ codes.t() / temperature
    probs, log_probs = logits.softmax(-1), logits.log_softmax(-1)
    sample = -(probs * log_probs).sum(-1).mean()
    mean = probs.mean(0)
    batch = -(mean * torch.log(mean + 1e-5)).sum()
    commitment = ((flat - torch.sign(flat).detach()) ** 2).mean()
    return sample, batch, commitment, 0.1 * (sample - batch) + 0.25 * commitment


@pytest.mark.parametrize("bits", [4, 12])
def test_lfq_objective_values_and_gradients_equal_open_magvit2s(bits):
    torch.manual_seed(0)
    quantizer = LookupFreeQuantizer(bits).train()
    z = (torch.randn(2, bits, 4, 4) * 0.3).requires_grad_(True)
    out = quantizer(z)
    z_ref = z.detach().clone().requires_grad_(True)
    sample, batch, commitment, objective = open_magvit2_objective(z_ref, bits)
    for ours, theirs in ((out.losses["sample_entropy"], sample), (out.losses["codebook_entropy"], batch),
                         (out.losses["commitment"], commitment), (out.losses["quantizer"], objective)):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    grad, expected = torch.autograd.grad(out.losses["quantizer"], z)[0], torch.autograd.grad(objective, z_ref)[0]
    torch.testing.assert_close(grad, expected, rtol=1e-3, atol=1e-3 * float(expected.abs().max()))


def test_lfq_codes_and_terms_equal_vector_quantize_pytorchs_with_the_bit_order_reversed():
    torch.manual_seed(0)
    bits = 4
    ours = LookupFreeQuantizer(bits).train()
    reference = LFQ(dim=bits, codebook_size=2**bits, entropy_loss_weight=0.1, commitment_loss_weight=0.25).train()
    z = torch.randn(8, bits, 8, 8)  # 512 tokens over 16 codes: no mean probability below 1e-5, where the two differ
    z1, z2 = z.clone().requires_grad_(True), z.clone().requires_grad_(True)
    out = ours(z1)
    (codes, indices, objective), terms = reference(z2, return_loss_breakdown=True)
    assert torch.equal(out.quantized, codes)
    reversed_bits = ((indices[..., None] >> torch.arange(bits)) & 1) * 2 ** torch.arange(bits - 1, -1, -1)
    assert torch.equal(out.indices, reversed_bits.sum(-1))
    torch.testing.assert_close(out.losses["sample_entropy"], terms.per_sample_entropy, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.losses["codebook_entropy"], terms.batch_entropy, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.losses["commitment"], terms.commitment)
    torch.testing.assert_close(out.losses["quantizer"], objective, rtol=1e-4, atol=1e-5)
    expected = torch.autograd.grad(objective, z2)[0]
    torch.testing.assert_close(torch.autograd.grad(out.losses["quantizer"], z1)[0], expected, rtol=1e-3,
                               atol=1e-3 * float(expected.abs().max()))


def test_lfq_indices_codes_and_the_straight_through_gradient():
    quantizer = LookupFreeQuantizer(6).eval()
    z = torch.randn(2, 6, 3, 3, requires_grad=True)
    out = quantizer(z)
    assert set(out.losses) == {"commitment", "quantizer"}  # the entropies are training-time terms
    assert torch.equal(quantizer.embed(out.indices).permute(0, 3, 1, 2), out.quantized)
    assert torch.equal(quantizer.codebook()[out.indices.flatten()], quantizer.embed(out.indices.flatten()))
    assert torch.equal(out.quantized, torch.where(z > 0, 1.0, -1.0))
    assert out.indices[0, 0, 0] == sum(2**d for d in range(6) if z[0, d, 0, 0] > 0)
    weights = torch.randn_like(z)
    grad, = torch.autograd.grad((out.quantized * weights).sum(), z)
    assert torch.equal(grad, weights)  # the sign passes the caption loss's gradient straight to the encoder
    assert quantizer.state_dict() == {} and not quantizer.learned_codebook


def test_fsq_equals_vector_quantize_pytorchs_and_passes_gradients_straight_through():
    levels = [5, 4, 3]
    quantizer = FiniteScalarQuantizer(levels)
    reference = FSQ(levels)
    z = torch.randn(2, 3, 4, 4, requires_grad=True)
    out = quantizer(z)
    codes, indices = reference(z.detach())
    assert torch.equal(out.quantized, codes) and torch.equal(out.indices, indices.long())
    assert quantizer.codebook_size == 60 and quantizer.code_dim == 3 and quantizer.state_dict() == {}
    assert torch.equal(quantizer.embed(out.indices).permute(0, 3, 1, 2), out.quantized)
    assert torch.equal(quantizer.codebook()[out.indices], quantizer.embed(out.indices))
    grad, = torch.autograd.grad(out.quantized.sum(), z)
    assert (grad != 0).all()


@pytest.mark.parametrize("build", [lambda: FiniteScalarQuantizer([2, 5]), lambda: FiniteScalarQuantizer([]),
                                   lambda: FiniteScalarQuantizer([1024] * 3), lambda: LookupFreeQuantizer(25)],
                         ids=["level of two", "no levels", "2**30 codes", "25 bits"])
def test_unusable_sizes_are_one_clear_error(build):
    with pytest.raises(ValueError, match="levels|bits"):
        build()
