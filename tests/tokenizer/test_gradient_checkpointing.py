"""Activation (gradient) checkpointing in the tokenizers changes memory, not results: identical outputs and grads."""

import pytest
import torch

from ett_lightning.tokenizer import VectorQuantizer, ViTVQTokenizer, VQTokenizer


def conv_tokenizer(checkpointing: bool) -> VQTokenizer:
    torch.manual_seed(0)
    return VQTokenizer(VectorQuantizer(16, 4), ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,),
                       resolution=32, z_channels=4, gradient_checkpointing=checkpointing)


def vit_tokenizer(checkpointing: bool) -> ViTVQTokenizer:
    torch.manual_seed(0)
    return ViTVQTokenizer(VectorQuantizer(16, 4), image_size=32, patch_size=8, encoder_model="vit_tiny_patch16_224",
                          width=32, depth=2, num_heads=2, gradient_checkpointing=checkpointing)


@pytest.mark.parametrize("build", [conv_tokenizer, vit_tokenizer])
def test_checkpointed_forward_and_gradients_match(build):
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    results = []
    for checkpointing in (False, True):
        tokenizer = build(checkpointing)
        reconstructions, out = tokenizer(images)
        (reconstructions.square().mean() + out.embeddings.sum()).backward()
        results.append((reconstructions.detach(), {n: p.grad for n, p in tokenizer.named_parameters()}))
        assert tokenizer.encoder.gradient_checkpointing == tokenizer.decoder.gradient_checkpointing == checkpointing
    (plain, plain_grads), (checkpointed, checkpointed_grads) = results
    assert torch.allclose(plain, checkpointed)
    for name, grad in plain_grads.items():
        if grad is not None:
            assert torch.allclose(grad, checkpointed_grads[name], atol=1e-6), name
