"""Frozen components stay in eval mode for the whole of a real ``Trainer.fit``: from the first step, after every
validation (and its sanity check), and after a resume, in each stage. Dropout in a frozen LLM or tokenizer would
otherwise perturb what the trained parts learn from."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from ett_lightning import ETTLoss, ETTModule, LanguageModel, MLPProjector, VQTokenizer
from ett_lightning.tokenizer import IndexBackpropQuantizer
from tests.conftest import IMAGE_SIZE, TINY_LLM, make_batch


def dropout_module(stage: str) -> ETTModule:
    """A tiny module whose tokenizer and LLM both have dropout, as a 7B LLM's config or a VQGAN's may."""
    torch.manual_seed(0)
    tokenizer = VQTokenizer(IndexBackpropQuantizer(32, 8), ch=16, ch_mult=(1, 2, 2), num_res_blocks=1,
                            attn_resolutions=(8,), resolution=IMAGE_SIZE, z_channels=16, dropout=0.5)
    llm = LanguageModel(config={**TINY_LLM, "attention_dropout": 0.5}, attn_implementation="eager")
    return ETTModule(tokenizer=tokenizer, projector=MLPProjector(8, 32), language_model=llm,
                     loss=ETTLoss(perceptual_weight=0.0), stage=stage, warmup_steps=1)


class RecordModes(L.Callback):
    """At every training step: whether each component is (entirely) in train mode, and whether two forward passes
    of the step's batch through each frozen part give the same output."""

    def __init__(self) -> None:
        self.steps: list[dict[str, object]] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        record = {}
        for name in module.components():
            modes = {m.training for m in getattr(module, name).modules()}
            record[name] = modes.pop() if len(modes) == 1 else "mixed"
        with torch.no_grad():
            images = batch.normalized().images if batch.images.dtype == torch.uint8 else batch.images
            if not module.is_trainable("tokenizer"):
                record["tokenizer_repeats"] = torch.equal(module.tokenizer(images)[0], module.tokenizer(images)[0])
            if not module.is_trainable("language_model"):
                logits = [module.language_model(batch.input_ids, None).logits for _ in range(2)]
                record["language_model_repeats"] = torch.equal(*logits)
        self.steps.append(record)


def fit_with_validation(module: ETTModule, steps: int, ckpt_path=None, root=None) -> RecordModes:
    train = [make_batch(module, seed=i) for i in range(steps)]
    recorder = RecordModes()
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, val_check_interval=2, limit_val_batches=1,
                        num_sanity_val_steps=1, callbacks=[recorder], default_root_dir=root,
                        enable_checkpointing=root is not None)
    loader = DataLoader(train, batch_size=None, collate_fn=lambda b: b)
    trainer.fit(module, loader, DataLoader(train[:1], batch_size=None, collate_fn=lambda b: b), ckpt_path=ckpt_path)
    return recorder


@pytest.mark.parametrize("stage", ["align", "ett", "posttrain"])
def test_frozen_components_are_in_eval_mode_at_every_step(stage):
    module = dropout_module(stage)
    recorder = fit_with_validation(module, 5)
    assert len(recorder.steps) == 5  # steps 3 and 5 come after a validation
    for step, record in enumerate(recorder.steps):
        for name in module.components():
            assert record[name] is module.is_trainable(name), f"step {step}: {name} is {record[name]}"
        assert all(record[key] for key in record if key.endswith("_repeats")), f"step {step}: {record}"


def test_the_frozen_parts_would_vary_in_train_mode():
    """The control: in train mode the dropout the test relies on does change the outputs."""
    module = dropout_module("align").train(True)
    module.language_model.train()
    module.tokenizer.train()
    batch = make_batch(module)
    with torch.no_grad():
        assert not torch.equal(module.language_model(batch.input_ids, None).logits,
                               module.language_model(batch.input_ids, None).logits)
        assert not torch.equal(module.tokenizer(batch.images)[0], module.tokenizer(batch.images)[0])


def test_a_resumed_fit_keeps_frozen_parts_in_eval_mode(tmp_path):
    fit_with_validation(dropout_module("posttrain"), 2, root=tmp_path)
    checkpoint = next((tmp_path / "checkpoints").glob("*.ckpt"))
    recorder = fit_with_validation(dropout_module("posttrain"), 4, ckpt_path=str(checkpoint), root=tmp_path)
    assert len(recorder.steps) == 2
    assert all(record["tokenizer"] is False and record["tokenizer_repeats"] for record in recorder.steps)
