import pytest
import torch
import torch.nn.functional as F

from ett_lightning.tokenizer import IndexBackpropQuantizer, VectorQuantizer


def latents(seed=0, shape=(2, 8, 4, 4)):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), requires_grad=True)


@pytest.mark.parametrize("l2_norm", [False, True])
def test_vector_quantizer_returns_nearest_code(l2_norm):
    quantizer = VectorQuantizer(32, 8, l2_norm=l2_norm)
    z = latents()
    out = quantizer(z)
    flat = z.detach().permute(0, 2, 3, 1).reshape(-1, 8)
    codebook = quantizer.embedding.weight.detach()
    if l2_norm:
        flat, codebook = F.normalize(flat, dim=-1), F.normalize(codebook, dim=-1)
    expected = torch.cdist(flat, codebook).argmin(1)
    assert torch.equal(out.indices.flatten(), expected)
    assert torch.allclose(out.quantized.permute(0, 2, 3, 1).reshape(-1, 8), codebook[expected], atol=1e-6)


def test_vector_quantizer_gradient_reaches_encoder_and_selected_codes_only():
    quantizer = VectorQuantizer(32, 8)
    z = latents()
    out = quantizer(z)
    out.quantized.pow(2).sum().backward()
    assert z.grad.abs().sum() > 0
    used = torch.zeros(32, dtype=torch.bool)
    used[out.indices.flatten()] = True
    row_grad = quantizer.embedding.weight.grad.abs().sum(1)
    assert torch.all(row_grad[used] > 0) and torch.all(row_grad[~used] == 0)


def test_vq_losses_equal_their_formula():
    quantizer = VectorQuantizer(32, 8, beta=0.3)
    z = latents()
    out = quantizer(z)
    codes = quantizer.embed(out.indices).permute(0, 3, 1, 2)
    mse = F.mse_loss(z, codes).item()
    assert out.losses["commitment"].item() == pytest.approx(mse, rel=1e-5)  # logged unweighted
    assert out.losses["codebook"].item() == pytest.approx(mse, rel=1e-5)
    assert out.losses["quantizer"].item() == pytest.approx(1.3 * mse, rel=1e-5)  # taming: codebook + beta * commitment


def test_ibq_forward_value_is_argmax_code_and_every_code_gets_gradient():
    quantizer = IndexBackpropQuantizer(32, 8)
    z = latents()
    out = quantizer(z)
    flat = z.detach().permute(0, 2, 3, 1).reshape(-1, 8)
    expected = (flat @ quantizer.embedding.weight.detach().t()).argmax(1)
    assert torch.equal(out.indices.flatten(), expected)
    assert torch.allclose(out.quantized, quantizer.embed(out.indices).permute(0, 3, 1, 2), atol=1e-6)
    out.quantized.sum().backward()
    assert torch.all(quantizer.embedding.weight.grad.abs().sum(1) > 0)
    assert z.grad.abs().sum() > 0


def test_ibq_gradient_equals_textbook_onehot_form():
    quantizer = IndexBackpropQuantizer(16, 4)
    z = latents(shape=(1, 4, 2, 2))
    weight = torch.randn(1, 4, 2, 2)
    (quantizer(z).quantized * weight).sum().backward()
    ours = quantizer.embedding.weight.grad.clone(), z.grad.clone()

    codebook = quantizer.embedding.weight.detach().clone().requires_grad_(True)
    z2 = z.detach().clone().requires_grad_(True)
    flat = z2.permute(0, 2, 3, 1).reshape(-1, 4)
    probs = (flat @ codebook.t()).softmax(1)
    onehot = F.one_hot(probs.argmax(1), 16).float()
    quantized = ((onehot - probs.detach() + probs) @ codebook).reshape(1, 2, 2, 4).permute(0, 3, 1, 2)
    (quantized * weight).sum().backward()
    assert torch.allclose(ours[0], codebook.grad, atol=1e-6)
    assert torch.allclose(ours[1], z2.grad, atol=1e-6)


def test_ibq_entropy_term_only_when_weighted():
    z = latents()
    assert "sample_entropy" not in IndexBackpropQuantizer(32, 8)(z).losses
    losses = IndexBackpropQuantizer(32, 8, entropy_weight=0.1)(z).losses
    assert torch.isfinite(losses["sample_entropy"]) and torch.isfinite(losses["codebook_entropy"])


@pytest.mark.parametrize("inv_temperature", [1.0, 10.0])
def test_the_vq_entropy_penalty_equals_lookup_free_quantizations_on_its_codebook(inv_temperature):
    """vector-quantize-pytorch's LFQ (the MAGVIT-v2 entropy penalty) and VectorQuantizer given LFQ's +-1 codebook:
    the same per-token and batch entropies (up to their different clamping of tiny probabilities), and the weighted
    difference in the quantizer's objective, with a gradient to the latents and every code."""
    from vector_quantize_pytorch import LFQ

    bits = 4
    lfq = LFQ(dim=bits, codebook_size=2**bits, entropy_loss_weight=1.0, commitment_loss_weight=0.0).train()
    quantizer = VectorQuantizer(2**bits, bits, entropy_weight=0.5, entropy_temperature=1 / inv_temperature)
    with torch.no_grad():
        quantizer.embedding.weight.copy_(lfq.codebook)
    z = latents(shape=(2, bits, 4, 5))
    _, reference = lfq(z.detach(), inv_temperature=inv_temperature, return_loss_breakdown=True)
    losses = quantizer(z).losses
    assert losses["sample_entropy"].item() == pytest.approx(reference.per_sample_entropy.item(), abs=2e-4)
    assert losses["codebook_entropy"].item() == pytest.approx(reference.batch_entropy.item(), abs=2e-4)
    plain = losses["codebook"] + 0.25 * losses["commitment"]
    penalty = losses["sample_entropy"] - losses["codebook_entropy"]
    assert losses["quantizer"].item() == pytest.approx((plain + 0.5 * penalty).item())
    (0.5 * penalty).backward()
    assert z.grad.abs().sum() > 0 and (quantizer.embedding.weight.grad.abs().sum(1) > 0).all()
    assert "sample_entropy" not in VectorQuantizer(2**bits, bits)(z).losses


def test_quantizer_rejects_wrong_channel_count():
    with pytest.raises(ValueError, match="expects 8 latent channels"):
        VectorQuantizer(32, 8)(torch.randn(1, 4, 2, 2))


@pytest.mark.parametrize("make", [lambda: VectorQuantizer(4096, 16), lambda: VectorQuantizer(4096, 16, l2_norm=True),
                                  lambda: IndexBackpropQuantizer(4096, 16, entropy_weight=0.1)],
                         ids=["vq", "vq-l2", "ibq"])
def test_bf16_autocast_picks_the_float32_codes_with_the_float32_losses_and_gradients(make):
    """bf16-mixed runs the encoder under autocast; the code lookup must not follow it into bf16 (a bf16 product
    of latents and 4096 codes picks another code for a few per cent of tokens)."""
    quantizer = make()
    torch.nn.init.normal_(quantizer.embedding.weight, generator=torch.Generator().manual_seed(1))
    z = latents(shape=(2, 16, 16, 16))
    reference = quantizer(z)
    reference_grad = torch.autograd.grad(reference.quantized.square().sum(), quantizer.embedding.weight)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = quantizer(z)
        in_bf16 = quantizer(z.detach().bfloat16())
    assert torch.equal(mixed.indices, reference.indices)
    assert mixed.losses.keys() == reference.losses.keys()
    assert all(torch.equal(mixed.losses[k], reference.losses[k]) for k in reference.losses)
    assert mixed.quantized.dtype == torch.float32 and torch.equal(mixed.quantized, reference.quantized)
    grad = torch.autograd.grad(mixed.quantized.square().sum(), quantizer.embedding.weight)[0]
    assert torch.equal(grad, reference_grad)
    assert in_bf16.quantized.dtype == torch.bfloat16, "codes come back in the latents' dtype"
