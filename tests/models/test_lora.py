"""LoRA on the LLM: what trains and what stays, merged equals unmerged, exports, starting from a plain checkpoint and
resuming."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from peft import PeftModel

from ett_lightning import ETTLoss, ETTModule, IndexBackpropQuantizer, LanguageModel, MLPProjector
from ett_lightning.checkpoints.export import export_module, load_export
from ett_lightning.models import LoRA
from ett_lightning.models.lora import is_adapter, merged, plain_name
from tests.conftest import TINY_LLM, fit, make_batch, tiny_tokenizer

LORA = LoRA(rank=4, alpha=8.0, dropout=0.0)


def lora_module(stage: str = "ett", **kwargs) -> ETTModule:
    torch.manual_seed(0)
    return ETTModule(tokenizer=tiny_tokenizer(IndexBackpropQuantizer), projector=MLPProjector(8, 32),
                     language_model=LanguageModel(config=TINY_LLM, lora=LORA),
                     loss=ETTLoss(perceptual_weight=0.0), stage=stage, warmup_steps=1, **kwargs)


def llm_weights(module: ETTModule) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.language_model.named_parameters() if not is_adapter(n)}


def adapters(module: ETTModule) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.language_model.named_parameters() if is_adapter(n)}


def logits(language_model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return language_model(inputs_embeds=language_model.get_input_embeddings()(ids)).logits


def test_stage_two_trains_tokenizer_projector_and_adapters_and_leaves_the_llm_weights():
    module = lora_module("ett")
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert {n for n in trainable if n.startswith("language_model.")} == {
        f"language_model.{n}" for n in adapters(module)}
    assert any(n.startswith("tokenizer.") for n in trainable) and any(n.startswith("projector.") for n in trainable)

    loss = module.training_step(make_batch(module), 0)
    loss.backward()
    for name, parameter in module.named_parameters():
        if is_adapter(name) and "lora_B" in name or name.startswith(("tokenizer.encoder", "projector.")):
            assert parameter.grad is not None, f"no gradient reached {name}"
        if name.startswith("language_model.") and not is_adapter(name):
            assert parameter.grad is None, f"the frozen LLM weight {name} got a gradient"

    module.zero_grad()
    before, before_adapters = llm_weights(module), adapters(module)
    fit(module, steps=2)
    after = llm_weights(module)
    assert all(torch.equal(value, after[name]) for name, value in before.items())
    changed = [n for n, v in adapters(module).items() if not torch.equal(v, before_adapters[n])]
    assert len(changed) == len(before_adapters), "every adapter should have trained"


def test_merged_and_exported_llms_equal_the_adapted_one_which_stays_as_it_was(tmp_path):
    module = lora_module()
    fit(module, steps=2)  # B is zero at first: train so that the adapters change the output
    module.eval()
    adapted = module.language_model.model
    ids = torch.randint(0, TINY_LLM["vocab_size"], (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = logits(adapted, ids)
        plain = merged(adapted)
        assert not isinstance(plain, PeftModel) and not any(is_adapter(n) for n, _ in plain.named_parameters())
        torch.testing.assert_close(logits(plain, ids), expected, rtol=1e-5, atol=1e-5)
        with adapted.disable_adapter():
            assert not torch.allclose(logits(adapted, ids), expected, atol=1e-4), "the adapters changed nothing"
        torch.testing.assert_close(logits(adapted, ids), expected, rtol=0, atol=0)

    out = export_module(module, tmp_path / "export")  # the merged LLM, and the adapters alone in peft's layout
    exported = load_export(out)["language_model"]
    assert exported.lora is None
    base = LanguageModel(config=TINY_LLM)
    base.model.load_state_dict(llm_state_without_adapters(module))
    reloaded = PeftModel.from_pretrained(base.model, str(out / "adapter")).eval()
    with torch.no_grad():
        torch.testing.assert_close(logits(exported.model, ids), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(logits(reloaded, ids), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("adapter_dtype", [torch.float32, torch.bfloat16], ids=["bf16_mixed", "bf16_true"])
def test_a_bf16_llm_is_merged_in_fp32_and_rounded_once(adapter_dtype):
    """The 7B LoRA recipe's dtypes: LLM weights in bf16, adapters in fp32 (bf16-mixed) or in bf16 (a bf16-true run).
    Updates of ~4e-5 sit below the bf16 spacing of weights ~1e-2 (~6e-5): an update rounded to bf16 before it is
    added loses part of itself a second time."""
    torch.manual_seed(0)
    llm = LanguageModel(config=TINY_LLM, dtype="bfloat16", lora=LORA).model
    with torch.no_grad():
        for name, parameter in llm.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn_like(parameter) * 3e-3)
            if is_adapter(name):
                parameter.data = parameter.data.to(adapter_dtype)
    adapted = {n: p.detach().clone() for n, p in llm.named_parameters()}
    plain = dict(merged(llm).named_parameters())
    scale = LORA.alpha / LORA.rank
    checked = 0
    for name, base in adapted.items():
        if name.endswith("base_layer.weight"):
            prefix = name.removesuffix("base_layer.weight")
            update = scale * (adapted[f"{prefix}lora_B.default.weight"].float()
                              @ adapted[f"{prefix}lora_A.default.weight"].float())
            expected = (base.float() + update.float()).to(torch.bfloat16)
            result = plain[plain_name(name)]
            assert result.dtype == torch.bfloat16
            assert torch.equal(result, expected), name
            rounded_twice = base + update.to(torch.bfloat16)
            checked += int(not torch.equal(rounded_twice, expected))
    assert checked > 0, "the update should be small enough for a second rounding to lose part of it"


def llm_state_without_adapters(module: ETTModule) -> dict[str, torch.Tensor]:
    """The adapted LLM's own weights under the names a plain Hugging Face model gives them."""
    state = module.language_model.state_dict()
    return {plain_name(k).removeprefix("model."): v for k, v in state.items() if not is_adapter(k)}


def test_init_from_a_checkpoint_without_adapters_loads_the_llm_and_starts_fresh_adapters(tmp_path):
    torch.manual_seed(3)
    plain = ETTModule(tokenizer=tiny_tokenizer(), projector=MLPProjector(8, 32),
                      language_model=LanguageModel(config=TINY_LLM), loss=ETTLoss(perceptual_weight=0.0), stage="align")
    path = tmp_path / "stage1.ckpt"
    torch.save({"state_dict": plain.state_dict()}, path)

    module = lora_module("ett", init_from=str(path))
    ids = torch.randint(0, TINY_LLM["vocab_size"], (1, 10), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():  # fresh adapters (B = 0) add nothing: the LoRA LLM computes what the stage-1 LLM did
        torch.testing.assert_close(logits(module.language_model.model, ids), logits(plain.language_model.model, ids),
                                   rtol=0, atol=0)
    assert all(not torch.count_nonzero(v) for n, v in adapters(module).items() if "lora_B" in n)


def test_init_from_a_checkpoint_with_adapters_into_an_llm_without_them_names_the_fix(tmp_path):
    path = tmp_path / "lora.ckpt"
    torch.save({"state_dict": lora_module().state_dict()}, path)
    with pytest.raises(ValueError, match="set language_model.init_args.lora"):
        ETTModule(tokenizer=tiny_tokenizer(), projector=MLPProjector(8, 32), language_model=LanguageModel(
            config=TINY_LLM), loss=ETTLoss(perceptual_weight=0.0), init_from=str(path))


def test_a_run_resumes_its_adapters_and_optimizer(tmp_path):
    module = lora_module()
    fit(module, steps=2, enable_checkpointing=True, default_root_dir=tmp_path)
    checkpoint = next((tmp_path / "checkpoints").glob("*.ckpt"))
    saved = torch.load(checkpoint, weights_only=True)
    assert any(is_adapter(k) for k in saved["state_dict"])

    resumed = lora_module()
    seen = {}

    class Probe(L.Callback):
        def on_train_start(self, trainer, pl_module):
            seen["adapters"] = adapters(pl_module)
            seen["steps"] = [int(s["step"]) for s in trainer.optimizers[0].state.values()]

    trainer = fit(resumed, steps=3, callbacks=[Probe()], ckpt_path=str(checkpoint))
    expected = {k.removeprefix("language_model."): v for k, v in saved["state_dict"].items()
                if k.startswith("language_model.") and is_adapter(k)}
    assert seen["adapters"].keys() == expected.keys()
    assert all(torch.equal(v, expected[k]) for k, v in seen["adapters"].items())
    assert seen["steps"] and all(step == 2 for step in seen["steps"])
    assert trainer.global_step == 3


def test_text_to_image_with_a_vocabulary_the_adapters_cannot_train_is_refused():
    from ett_lightning.tasks import TextToImage

    with pytest.raises(ValueError, match="image_vocabulary 'head'"):
        TextToImage(tokenizer=tiny_tokenizer(), projector=MLPProjector(8, 32),
                    language_model=LanguageModel(config=TINY_LLM, lora=LORA), loss=ETTLoss(perceptual_weight=0.0),
                    image_vocabulary="extended")
