"""AdamW parameter groups as the field splits them: weight matrices and convolutions decayed; biases, norms,
codebooks and learned positions / class tokens not (timm, VQGAN); the LLM's embeddings decayed (Hugging Face's
Trainer). Listed by name, for the conv tokenizer, the ViT tokenizer and the whole module."""

from __future__ import annotations

import logging

import pytest
import torch

from ett_lightning import MLPProjector, ViTVQTokenizer
from ett_lightning.tokenizer import IndexBackpropQuantizer
from ett_lightning.training.optimizer import parameter_groups, undecayed_names
from tests.conftest import fit, tiny_module, tiny_tokenizer


def test_the_conv_tokenizer_decays_its_convolutions_and_not_its_codebook():
    tokenizer = tiny_tokenizer()
    undecayed = undecayed_names(tokenizer)
    assert "quantize.embedding.weight" in undecayed
    assert "encoder.conv_in.weight" not in undecayed and "decoder.conv_out.weight" not in undecayed
    assert {"encoder.conv_in.bias", "encoder.norm_out.weight"} <= undecayed
    assert all(name in undecayed for name, p in tokenizer.named_parameters() if p.ndim < 2)


def test_the_vit_tokenizer_leaves_positions_and_the_class_token_undecayed():
    tokenizer = ViTVQTokenizer(IndexBackpropQuantizer(64, 8), image_size=32, patch_size=8,
                               encoder_model="vit_tiny_patch16_224", width=32, depth=1, num_heads=2)
    undecayed = undecayed_names(tokenizer)
    assert {"encoder.vit.pos_embed", "encoder.vit.cls_token", "decoder.pos_embed",
            "quantize.embedding.weight"} <= undecayed
    assert "decoder.proj_out.weight" not in undecayed and "encoder.vit.patch_embed.proj.weight" not in undecayed


def test_groups_hold_every_trainable_parameter_once_and_the_llm_embeddings_decay(caplog):
    module = tiny_module("ett")
    with caplog.at_level(logging.DEBUG, logger="ett_lightning.training.optimizer"):
        groups = {name: parameter_groups(name, getattr(module, name), 1e-4, 0.05) for name in module.components()}
    for name, (decayed, undecayed) in groups.items():
        assert decayed["weight_decay"] == 0.05 and undecayed["weight_decay"] == 0.0
        ids = [id(p) for p in decayed["params"] + undecayed["params"]]
        trainable = [p for p in getattr(module, name).parameters() if p.requires_grad]
        assert sorted(ids) == sorted(id(p) for p in trainable), name
    embeddings = module.language_model.model.get_input_embeddings().weight
    assert any(p is embeddings for p in groups["language_model"][0]["params"])
    codebook = module.tokenizer.quantize.embedding.weight
    assert any(p is codebook for p in groups["tokenizer"][1]["params"])
    assert "tokenizer: weight decay 0.05 on" in caplog.text and "quantize.embedding.weight" in caplog.text


def test_a_decayed_codebook_would_shrink():
    """Why: one AdamW step with decay and no gradient scales every code by (1 - lr * decay)."""
    projector = MLPProjector(8, 32)
    codebook = tiny_tokenizer().quantize.embedding.weight
    groups = [{"params": [codebook], "weight_decay": 0.5}, {"params": list(projector.parameters())}]
    before = codebook.detach().clone()
    codebook.grad = torch.zeros_like(codebook)
    torch.optim.AdamW(groups, lr=0.1).step()
    assert torch.allclose(codebook.detach(), before * (1 - 0.1 * 0.5))


def test_a_codebook_rate_moves_the_quantizer_into_a_group_of_its_own():
    module = tiny_module("ett", learning_rates={"tokenizer": 1e-3, "codebook": 1e-5})
    fit(module, steps=1)
    groups = {group["name"]: group for group in module.trainer.optimizers[0].param_groups}
    codebook = {id(p) for p in module.tokenizer.quantize.parameters()}
    assert {id(p) for p in groups["tokenizer/codebook"]["params"]} == codebook
    assert groups["tokenizer/codebook"]["weight_decay"] == 0.0
    assert not codebook & {id(p) for name, g in groups.items() if name != "tokenizer/codebook" for p in g["params"]}
    scheduler = module.trainer.lr_scheduler_configs[0].scheduler
    rates = dict(zip([g["name"] for g in scheduler.optimizer.param_groups], scheduler.base_lrs, strict=True))
    assert rates["tokenizer/codebook"] == 1e-5 and rates["tokenizer"] == rates["tokenizer/no_decay"] == 1e-3
    assert sum(len(g["params"]) for g in groups.values()) == len([p for p in module.parameters() if p.requires_grad])


def test_a_misspelt_learning_rate_is_refused():
    with pytest.raises(ValueError, match=r"learning_rates names \['tokenzier'\]: give rates for \['codebook', "):
        tiny_module("ett", learning_rates={"tokenzier": 1e-3})
