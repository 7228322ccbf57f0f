"""ViT tokenizer: shapes, a gradient path from the codes to every encoder weight, local timm weights, export."""

import pytest
import torch
from safetensors.torch import save_file

from ett_lightning import ETTLoss, ETTModule, LanguageModel, MLPProjector, ViTVQTokenizer
from ett_lightning.checkpoints.export import export_module
from ett_lightning.tokenizer import VectorQuantizer, ViTEncoder
from tests.conftest import TINY_LLM

TINY_VIT = dict(image_size=32, patch_size=8, encoder_model="vit_tiny_patch16_224", width=32, depth=1, num_heads=2)


def tiny_vit_tokenizer(**kwargs) -> ViTVQTokenizer:
    torch.manual_seed(0)
    return ViTVQTokenizer(VectorQuantizer(16, 4, l2_norm=True), **{**TINY_VIT, **kwargs})


def test_shapes_and_decode_indices_match_the_forward():
    tokenizer = tiny_vit_tokenizer(decoder_depth=2).eval()
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    recon, out = tokenizer(images)
    assert tokenizer.num_tokens(32) == 16 and len(tokenizer.decoder.blocks) == 2
    assert out.embeddings.shape == (2, 16, 4) and out.indices.shape == (2, 16)
    assert recon.shape == images.shape and recon.dtype == torch.float32
    assert torch.equal(tokenizer.decode_indices(out.indices), recon)


def test_decoder_folds_each_token_into_its_own_patch():
    tokenizer = tiny_vit_tokenizer()
    z = torch.zeros(1, 32, 4, 4)
    z[0, :, 1, 2] = 1.0
    with torch.no_grad():
        tokenizer.decoder.blocks = torch.nn.Sequential()
        tokenizer.decoder.pos_embed.zero_()
        tokenizer.decoder.proj_in.bias.zero_()
        tokenizer.decoder.proj_out.bias.zero_()
        image = tokenizer.decoder(z)
    changed = image.abs().sum(1)[0] > 0
    assert changed[8:16, 16:24].all() and changed.sum() == 64


def test_other_image_sizes_get_a_clear_error():
    with pytest.raises(ValueError, match="built for 32px images, got 64px"):
        tiny_vit_tokenizer().num_tokens(64)
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        tiny_vit_tokenizer(image_size=30)


def test_straight_through_codes_reach_every_encoder_weight():
    tokenizer = tiny_vit_tokenizer()
    out = tokenizer.encode(torch.rand(2, 3, 32, 32) * 2 - 1)
    out.embeddings.square().sum().backward()
    missing = [n for n, p in tokenizer.encoder.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_encoder_loads_local_timm_weights_and_reports_a_missing_file(tmp_path):
    torch.manual_seed(3)
    source = ViTEncoder("vit_tiny_patch16_224", 32, 8, 32, 1, 2)
    save_file(source.vit.state_dict(), tmp_path / "vit.safetensors")
    loaded = ViTEncoder("vit_tiny_patch16_224", 32, 8, 32, 1, 2, weights=str(tmp_path / "vit.safetensors"))
    images = torch.rand(1, 3, 32, 32)
    assert torch.equal(loaded(images), source(images))
    with pytest.raises(FileNotFoundError, match="ViT encoder weights not found"):
        ViTEncoder("vit_tiny_patch16_224", 32, 8, 32, 1, 2, weights=str(tmp_path / "absent.safetensors"))


def test_export_rebuilds_a_vit_tokenizer_exactly(tmp_path):
    module = ETTModule(tokenizer=tiny_vit_tokenizer(), projector=MLPProjector(4, 32),
                       language_model=LanguageModel(config=TINY_LLM), loss=ETTLoss(perceptual_weight=0.0))
    export_module(module, tmp_path / "export")
    reloaded = ETTModule.from_export(str(tmp_path / "export"), loss=ETTLoss(perceptual_weight=0.0))
    assert type(reloaded.tokenizer) is ViTVQTokenizer
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(reloaded.tokenizer.eval()(images)[0], module.tokenizer.eval()(images)[0])
