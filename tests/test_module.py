import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from ett_lightning import ETTModule, MLPProjector
from tests.conftest import fit, make_batch, tiny_module, tiny_tokenizer
from tests.distributed.float16 import CPUFloat16


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_ett_caption_loss_alone_reaches_encoder_and_codebook():
    module = tiny_module("ett")
    batch = make_batch(module)
    encoded = module.encode_images(batch.images)
    module.caption_loss(batch, module.projector(encoded.embeddings)).backward()
    tokenizer = module.tokenizer
    assert tokenizer.encoder.conv_in.weight.grad.abs().sum() > 0
    assert tokenizer.quant_conv.weight.grad.abs().sum() > 0
    assert tokenizer.quantize.embedding.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in tokenizer.decoder.parameters())


def test_caption_loss_without_a_mask_equals_the_masked_loss_on_right_padded_batches():
    from ett_lightning.data.batching.collate import Collator
    from ett_lightning.data.sequences.sequence_builder import SequenceBuilder
    from ett_lightning.data.skips import SkipCounter

    module = tiny_module("ett").eval()
    builder = SequenceBuilder(module.text_tokenizer, module.num_image_tokens(32))
    image = torch.zeros(32, 32, 3, dtype=torch.uint8).numpy()
    samples = [{"image": image, "sequence": builder.build("caption", {}, text), "answers": [], "task": "caption",
                "key": str(i)}
               for i, text in enumerate(["a", "a much longer caption than the first one"])]
    batch = Collator(module.text_tokenizer.pad_token_id, SkipCounter(), builder.num_image_tokens)(samples).normalized()
    assert (batch.attention_mask == 0).any(), "the batch must hold padding for this test to mean anything"
    image_embeds = module.projector(module.encode_images(batch.images).embeddings)
    masked = module.language_model(batch.input_ids, batch.attention_mask, image_embeds, batch.image_slots,
                                   labels=batch.labels).loss
    torch.testing.assert_close(module.caption_loss(batch, image_embeds), masked, rtol=1e-6, atol=1e-6)


def test_align_trains_projector_only_and_tokenizer_stays_bit_identical(tmp_path):
    module = tiny_module("align")
    before = {name: snapshot(getattr(module, name)) for name in ("tokenizer", "projector", "language_model")}
    trainer = fit(module, steps=2, default_root_dir=tmp_path)
    for name in ("tokenizer", "language_model"):
        after = snapshot(getattr(module, name))
        assert all(torch.equal(before[name][k], after[k]) for k in after), name
        assert all(p.grad is None for p in getattr(module, name).parameters())
    assert not all(torch.equal(before["projector"][k], v) for k, v in snapshot(module.projector).items())
    optimizer = trainer.optimizers[0]
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in module.projector.parameters()}
    assert all(id(p) in optimized for p in optimizer.state)


def test_posttrain_keeps_tokenizer_frozen_and_in_eval_mode(tmp_path):
    module = tiny_module("posttrain")
    before = snapshot(module.tokenizer)
    fit(module, default_root_dir=tmp_path)
    module.train()
    assert not module.tokenizer.training and module.language_model.training
    assert all(torch.equal(before[k], v) for k, v in snapshot(module.tokenizer).items())


def test_ett_stage_updates_every_component(tmp_path):
    module = tiny_module("ett")
    before = {name: snapshot(getattr(module, name)) for name in ("tokenizer", "projector", "language_model")}
    fit(module, default_root_dir=tmp_path)
    for name, state in before.items():
        assert not all(torch.equal(state[k], v) for k, v in snapshot(getattr(module, name)).items()), name
    assert torch.any(module.tokenizer.decoder.conv_out.weight != before["tokenizer"]["decoder.conv_out.weight"])


def test_trainable_override_and_unknown_names():
    module = tiny_module("ett", trainable={"language_model": False})
    assert module.trainable == {"tokenizer", "projector"}
    assert not any(p.requires_grad for p in module.language_model.parameters())
    with pytest.raises(ValueError, match="unknown component 'llm'"):
        tiny_module("ett", trainable={"llm": False})
    with pytest.raises(ValueError, match="unknown stage 'sft'"):
        tiny_module("sft")


def test_per_component_learning_rates(tmp_path):
    module = tiny_module("ett", learning_rates={"tokenizer": 1e-6})
    trainer = fit(module, default_root_dir=tmp_path)
    initial = {g["name"]: g["initial_lr"] for g in trainer.optimizers[0].param_groups}
    assert initial["tokenizer"] == 1e-6 and initial["projector"] == 1e-3 and initial["language_model"] == 2e-5
    assert initial["tokenizer/no_decay"] == 1e-6


def test_dimension_mismatch_names_the_key():
    module = tiny_module()
    with pytest.raises(ValueError, match="projector.init_args.in_dim: 8"):
        ETTModule(tiny_tokenizer(), MLPProjector(4, 32), module.language_model)
    with pytest.raises(ValueError, match="projector.init_args.out_dim: 32"):
        ETTModule(tiny_tokenizer(), MLPProjector(8, 16), module.language_model)


def test_lightning_checkpoint_reloads_to_identical_outputs(tmp_path):
    module = tiny_module("ett")
    trainer = fit(module, default_root_dir=tmp_path)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    fresh = tiny_module("ett")
    fresh.projector[0].weight.data.add_(1.0)
    reloaded = ETTModule.load_from_checkpoint(path, tokenizer=fresh.tokenizer, projector=fresh.projector,
                                              language_model=fresh.language_model, loss=fresh.loss)
    assert reloaded.stage == "ett"
    batch = make_batch(module, seed=7)
    module.eval()
    reloaded.eval()
    with torch.no_grad():
        expected, _, _ = module.compute_losses(batch)
        actual, _, _ = reloaded.compute_losses(batch)
    assert torch.equal(expected, actual)


def vqa_batch(module: ETTModule, questions: list[str]):
    from ett_lightning.data.batching.collate import Collator
    from ett_lightning.data.sequences.sequence_builder import SequenceBuilder
    from ett_lightning.data.skips import SkipCounter

    builder = SequenceBuilder(module.text_tokenizer, module.num_image_tokens(32))
    generator = torch.Generator().manual_seed(3)
    samples = [{"image": torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8, generator=generator).numpy(),
                "task": "vqa",
                "key": str(i),
                "sequence": builder.build("vqa", {"question": q}, "yes"), "answers": ["yes"]}
               for i, q in enumerate(questions)]
    return Collator(module.text_tokenizer.pad_token_id, SkipCounter(), builder.num_image_tokens)(samples).normalized()


def test_batched_generation_with_left_padding_equals_manual_greedy_decoding():
    module = tiny_module("posttrain").eval()
    batch = vqa_batch(module, ["Why?", "What is written in the image?"])
    answers = module.generate(batch, max_new_tokens=5)
    lm = module.language_model
    for row in range(2):
        start = int(batch.target_starts[row])
        ids, slots = batch.input_ids[row:row + 1, :start], batch.image_slots[row:row + 1, :start]
        image_embeds = module.projector(module.tokenizer.encode(batch.images[row:row + 1]).embeddings)
        new = []
        with torch.no_grad():
            for _ in range(5):
                logits = lm(ids, torch.ones_like(ids), image_embeds, torch.cat(
                    [slots, torch.zeros(1, ids.shape[1] - slots.shape[1], dtype=torch.bool)], 1)).logits
                token = int(logits[0, -1].argmax())
                if token == lm.tokenizer.eos_token_id:
                    break
                new.append(token)
                ids = torch.cat([ids, torch.tensor([[token]])], 1)
        assert answers[row] == lm.tokenizer.decode(new, skip_special_tokens=True).strip()


def test_init_from_loads_the_components_a_checkpoint_holds(tmp_path):
    source = tiny_module("ett")
    torch.save({"state_dict": {f"tokenizer.{k}": v for k, v in source.tokenizer.state_dict().items()}},
               tmp_path / "tokenizer.ckpt")
    module = tiny_module("align", init_from=str(tmp_path / "tokenizer.ckpt"))
    assert all(torch.equal(v, source.tokenizer.state_dict()[k]) for k, v in module.tokenizer.state_dict().items())
    assert "init_from" not in module.hparams
    torch.save({"state_dict": {"something.else": torch.zeros(1)}}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="not an ett_lightning checkpoint"):
        tiny_module("align", init_from=str(tmp_path / "other.ckpt"))
    bad = {f"tokenizer.{k}": v for k, v in source.tokenizer.state_dict().items() if "decoder" not in k}
    torch.save({"state_dict": bad}, tmp_path / "bad.ckpt")
    with pytest.raises(ValueError, match=r"missing \(\d+\): decoder"):
        tiny_module("align", init_from=str(tmp_path / "bad.ckpt"))


def test_predict_step_returns_generated_text_with_keys_and_references():
    module = tiny_module("posttrain").eval()
    batch = vqa_batch(module, ["Why?", "What?"])
    rows = module.predict_step(batch, 0)
    assert [r["key"] for r in rows] == ["0", "1"] and all(r["references"] == ["yes"] for r in rows)
    assert [r["prediction"] for r in rows] == module.generate(batch)


def test_torch_compile_option_compiles_in_place_and_keeps_checkpoint_keys():
    module = tiny_module("ett", torch_compile={"backend": "eager"})
    keys = set(module.state_dict())
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(module, DataLoader([make_batch(module)], batch_size=None, collate_fn=lambda b: b))
    assert module.compiled_parts() == (module.language_model.model, module.tokenizer.encoder,
                                       module.tokenizer.decoder)
    for part in module.compiled_parts():
        assert part._compiled_call_impl is not None
    assert set(module.state_dict()) == keys and trainer.global_step == 1


class StepGradNorm(L.Callback):
    """The norm of all gradients as the optimizer step sees them (after the trainer's clipping) and the loss
    scale the fused step is told to divide by (None: already unscaled)."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, object]] = []

    def on_train_start(self, trainer, pl_module) -> None:
        trainer.optimizers[0].register_step_post_hook(self.record)

    def record(self, optimizer, args, kwargs) -> None:
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        self.seen.append((float(norm), getattr(optimizer, "grad_scale", None)))


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "16-mixed"])
def test_gradient_clipping_works_in_every_precision_with_the_fused_optimizer(precision):
    """The shipped recipes clip at 1.0 in bf16-mixed: Lightning's AMP plugin refuses to clip for a fused
    optimizer, so the module clips itself. In 16-mixed it unscales first: scaled gradients clipped to 1e-3 would
    reach the step 1024 times smaller (the scaler's scale here), which the lower bound catches."""
    module = tiny_module("ett")
    before = snapshot(module)
    if precision == "16-mixed":  # Lightning maps 16-mixed to bf16 on CPU; CPUFloat16 keeps float16 and its scaler
        settings = {"plugins": [CPUFloat16(init_scale=1024.0)]}
    else:
        settings = {"precision": precision}
    norms = StepGradNorm()
    trainer = fit(module, steps=3, gradient_clip_val=1e-3, callbacks=[norms], **settings)
    assert trainer.optimizers[0].defaults["fused"]
    assert trainer.global_step == 3 and len(norms.seen) == 3
    assert all(norm <= 1e-3 * (1 + 1e-4) and norm > 1e-4 and scale is None for norm, scale in norms.seen), norms.seen
    assert any(not torch.equal(v, module.state_dict()[k]) for k, v in before.items())
