"""TextToImage: loss on image positions only, guided sampling with the KV cache, caption dropout, both image
vocabularies, and the fit -> predict path that writes PNGs."""

import json

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ett_lightning import ETTLoss, ImageTextDataModule, LanguageModel, MLPProjector
from ett_lightning.callbacks import GeneratedImageWriter, GenerationMetrics
from ett_lightning.data import PromptBatch
from ett_lightning.data.batching.collate import Collator
from ett_lightning.data.batching.prompts import PromptCollator
from ett_lightning.data.sequences.sequence_builder import IGNORE_INDEX, SequenceBuilder
from ett_lightning.data.skips import SkipCounter
from ett_lightning.tasks import TextToImage
from tests.conftest import IMAGE_SIZE, TINY_LLM, tiny_module, tiny_tokenizer

CAPTIONS = ["the word cat in red", "a blue sign that says stop now"]


def t2i(llm_config=TINY_LLM, **kwargs) -> TextToImage:
    torch.manual_seed(0)
    return TextToImage(tiny_tokenizer(), MLPProjector(8, 32), LanguageModel(config=llm_config),
                       loss=ETTLoss(perceptual_weight=0.0), image_size=IMAGE_SIZE, warmup_steps=1, **kwargs)


def builder(module: TextToImage) -> SequenceBuilder:
    return SequenceBuilder(module.text_tokenizer, module.num_image_tokens(IMAGE_SIZE), layout="text_first")


def t2i_batch(module: TextToImage, captions=CAPTIONS):
    seq = builder(module)
    generator = torch.Generator().manual_seed(0)
    samples = [{"image": torch.randint(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=torch.uint8,
                                       generator=generator).numpy(),
                "sequence": seq.build("caption", {}, c), "answers": [c], "task": "caption", "key": str(i)}
               for i, c in enumerate(captions)]
    return Collator(module.text_tokenizer.pad_token_id, SkipCounter(), seq.num_image_tokens)(samples).normalized()


def prompt_batch(module: TextToImage, prompts=CAPTIONS) -> PromptBatch:
    return PromptCollator(builder(module))(list(enumerate(prompts)))


def test_text_first_layout_has_no_text_labels_and_skips_vqa():
    module = t2i()
    seq = builder(module).build("caption", {}, "hello")
    n = module.num_image_tokens(IMAGE_SIZE)
    assert set(seq.labels) == {IGNORE_INDEX}
    assert seq.input_ids[seq.slot_start - 1] == module.language_model.image_begin_id
    assert seq.input_ids[seq.slot_start + n] == module.language_model.image_end_id
    with pytest.raises(Exception, match="no caption"):
        builder(module).build("vqa", {"question": "q"}, "a")


def test_loss_is_cross_entropy_over_image_positions_only():
    module = t2i().eval()
    batch = t2i_batch(module)
    encoded = module.encode_images(batch.images)
    loss = module.generation_loss(batch, module.image_inputs(encoded.indices, encoded.embeddings), encoded.indices)
    lm = module.language_model
    embeds = lm.splice(lm.embed(batch.input_ids), module.projector(encoded.embeddings), batch.image_slots)
    hidden = module.hidden_states(embeds, batch.attention_mask).last_hidden_state
    expected = []
    for row in range(len(batch)):
        start = int(batch.image_slots[row].nonzero()[0])
        for j in range(encoded.indices.shape[1]):
            logits = module.image_head(hidden[row, start - 1 + j])
            expected.append(F.cross_entropy(logits[None], encoded.indices[row, j][None]))
    assert torch.allclose(loss, torch.stack(expected).mean(), atol=1e-5)

    after_image = batch.input_ids.clone()
    after_image[:, -2:] = 7  # <image_end>, <eos>, padding: no position after the last image token counts
    altered = type(batch)(**{**batch.__dict__, "input_ids": after_image})
    loss_altered = module.generation_loss(altered, module.image_inputs(encoded.indices, encoded.embeddings),
                                          encoded.indices)
    assert torch.equal(loss, loss_altered)
    other_caption = t2i_batch(module, ["zzzz qqqq xxxx", "0000 1111 2222 3333 44"])
    other = module.generation_loss(other_caption, module.image_inputs(encoded.indices, encoded.embeddings),
                                   encoded.indices)
    assert not torch.allclose(loss, other), "the caption must condition the image tokens"


def test_posttrain_trains_llm_projector_and_head_not_tokenizer_and_ett_reaches_the_encoder():
    module = t2i()
    total, parts, _ = module.train().compute_losses(t2i_batch(module))
    assert set(parts) == {"image_tokens", "total"}
    total.backward()
    assert module.image_head.weight.grad.abs().sum() > 0
    assert module.projector[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in module.tokenizer.parameters())

    ett = t2i(stage="ett")
    total, parts, _ = ett.train().compute_losses(t2i_batch(ett))
    assert {"image_tokens", "reconstruction", "vq", "total"} <= set(parts)
    parts["image_tokens"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in ett.tokenizer.encoder.parameters()), \
        "the generation loss reaches the encoder through the codebook embeddings"


def test_caption_dropout_leaves_bos_begin_image_end():
    module = t2i(caption_dropout=0.999).train()
    batch = t2i_batch(module)
    dropped = module.drop_captions(batch)
    lm, n = module.language_model, module.num_image_tokens(IMAGE_SIZE)
    bos = [module.text_tokenizer.bos_token_id] * module.num_bos_tokens()
    for row in range(len(batch)):
        length = int(dropped.attention_mask[row].sum())
        ids = dropped.input_ids[row, :length].tolist()
        assert ids[: len(bos) + 1] == bos + [lm.image_begin_id]
        assert ids[len(bos) + 1 + n:] == [lm.image_end_id, module.text_tokenizer.eos_token_id]
        assert dropped.image_slots[row].sum() == n and int(dropped.target_starts[row]) == len(bos) + 1
        assert not dropped.attention_mask[row, length:].any()
    assert torch.equal(t2i(caption_dropout=0.0).train().drop_captions(batch).input_ids, batch.input_ids)


def test_sampling_gives_valid_indices_and_images_of_the_right_size():
    module = t2i(top_k=5, top_p=0.9, temperature=0.8).eval()
    images, texts = module.generate_images(prompt_batch(module), seed=1)
    assert images.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE) and texts == CAPTIONS
    batch = prompt_batch(module)
    indices = module.generate_indices(batch.input_ids, batch.attention_mask, guidance_scale=2.0, top_k=5,
                                      generator=torch.Generator().manual_seed(0))
    assert indices.shape == (2, module.num_image_tokens(IMAGE_SIZE)) and indices.dtype == torch.long
    assert int(indices.min()) >= 0 and int(indices.max()) < module.tokenizer.codebook_size


def test_guidance_scale_one_equals_unguided_sampling_and_larger_scales_differ():
    module = t2i().eval()
    batch = prompt_batch(module)

    def sample(scale, temperature=1.0):
        return module.generate_indices(batch.input_ids, batch.attention_mask, guidance_scale=scale,
                                       temperature=temperature, generator=torch.Generator().manual_seed(3))

    assert torch.equal(sample(1.0), sample(None))
    assert not torch.equal(sample(4.0, temperature=0.0), sample(None, temperature=0.0))


def test_kv_cache_generation_equals_full_recomputation():
    module = t2i({**TINY_LLM, "initializer_range": 0.5}).eval()  # sharp attention: positions matter
    batch = prompt_batch(module)
    cached = module.generate_indices(batch.input_ids, batch.attention_mask, temperature=0.0)
    ids, mask = batch.input_ids, batch.attention_mask
    embeds, tokens = module.language_model.embed(ids), []
    for _ in range(module.num_generated_tokens):
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        hidden = module.hidden_states(embeds, mask, position_ids=positions).last_hidden_state[:, -1]
        tokens.append(module.image_logits(hidden).argmax(-1))
        embeds = torch.cat([embeds, module.image_inputs(tokens[-1][:, None])], dim=1)
        mask = F.pad(mask, (0, 1), value=1)
    assert torch.equal(cached, torch.stack(tokens, 1))


def test_compile_targets_the_llm_body_the_task_calls():
    module = t2i(torch_compile={"backend": "eager"})
    module.configure_model()
    assert module.compiled_parts()[0] is module.language_model.model.base_model
    assert module.language_model.model.base_model._compiled_call_impl is not None
    batch = t2i_batch(module)
    encoded = module.encode_images(batch.images)
    assert torch.isfinite(module.generation_loss(batch, module.image_inputs(encoded.indices, encoded.embeddings),
                                                 encoded.indices))


def test_extended_vocabulary_reads_and_writes_image_rows():
    module = t2i(image_vocabulary="extended")
    k = module.tokenizer.codebook_size
    embeddings = module.language_model.model.get_input_embeddings()
    assert module.image_head is None and embeddings.num_embeddings == module.image_token_offset + k
    total, _, _ = module.train().compute_losses(t2i_batch(module))
    total.backward()
    grad = embeddings.weight.grad
    assert grad[module.image_token_offset:].abs().sum() > 0
    batch = prompt_batch(module)
    indices = module.eval().generate_indices(batch.input_ids, batch.attention_mask, guidance_scale=2.0)
    assert int(indices.max()) < k


def test_init_from_an_ett_checkpoint_loads_components_and_starts_a_fresh_head(tmp_path):
    ett = tiny_module()
    torch.save({"state_dict": ett.state_dict()}, tmp_path / "ett.ckpt")
    torch.manual_seed(1)
    module = TextToImage(tiny_tokenizer(), MLPProjector(8, 32), LanguageModel(config=TINY_LLM),
                         loss=ETTLoss(perceptual_weight=0.0), image_size=IMAGE_SIZE,
                         init_from=str(tmp_path / "ett.ckpt"))
    for name in ("tokenizer", "projector", "language_model"):
        theirs = getattr(ett, name).state_dict()
        assert all(torch.equal(v, theirs[k]) for k, v in getattr(module, name).state_dict().items())
    with pytest.raises(ValueError, match="image_vocabulary"):
        t2i(image_vocabulary="tokens")
    with pytest.raises(ValueError, match="caption_dropout"):
        t2i(caption_dropout=1.0)


class MeanColour(torch.nn.Module):
    """A tiny FID feature extractor (per-channel means and spreads) so the test needs no Inception weights."""

    num_features = 6

    def forward(self, images):
        x = images.float()
        return torch.cat([x.mean((2, 3)), x.std((2, 3))], dim=1)


@pytest.mark.slow
def test_fit_then_predict_writes_pngs_and_logs_generation_fid(synthetic_shards, tmp_path):
    module = t2i(guidance_scale=2.0, top_k=16)
    data = ImageTextDataModule(
        train_shards=str(synthetic_shards / "caption" / "train-*.tar"),
        val_shards=str(synthetic_shards / "caption" / "val-*.tar"), batch_size=4, num_workers=0,
        image_size=IMAGE_SIZE, shuffle_buffer=8, samples_per_epoch=12, pin_memory=False,
        predict_prompts=["a red word", "stop"])
    metrics = GenerationMetrics(fid_feature_extractor=MeanColour(), max_batches=1, num_images=4)
    before = module.image_head.weight.detach().clone()
    trainer = L.Trainer(accelerator="cpu", max_steps=3, limit_val_batches=1, num_sanity_val_steps=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path,
                        callbacks=[metrics, GeneratedImageWriter(str(tmp_path / "out"))])
    trainer.fit(module, data)
    assert not torch.equal(before, module.image_head.weight)
    assert torch.isfinite(trainer.callback_metrics["val/gfid"])
    assert (tmp_path / "samples" / "step_0000003.png").is_file()

    trainer.predict(module, data, return_predictions=False)
    index = [json.loads(line) for line in (tmp_path / "out" / "prompts.jsonl").read_text().splitlines()]
    assert [entry["prompt"] for entry in index] == ["a red word", "stop"]
    for entry in index:
        assert Image.open(tmp_path / "out" / entry["file"]).size == (IMAGE_SIZE, IMAGE_SIZE)
    assert (tmp_path / "out" / "grid_0_0000.png").is_file()
