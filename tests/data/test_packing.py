"""Packing: fewer LLM positions, the same samples, loss and gradients, and no attention across samples."""

from __future__ import annotations

import random

import pytest
import torch

from ett_lightning.data.batching.collate import Collator
from ett_lightning.data.batching.packing import pack_rows
from ett_lightning.data.sequences.sequence_builder import IGNORE_INDEX, SequenceBuilder
from ett_lightning.data.skips import SkipCounter
from tests.conftest import IMAGE_SIZE, tiny_module


def long_tailed_lengths(count: int, seed: int) -> list[int]:
    """Image tokens plus a caption of 1-80 bytes, median about 12, as web captions are."""
    rng = random.Random(seed)
    return [70 + min(80, max(1, int(rng.lognormvariate(2.5, 0.8)))) for _ in range(count)]


def efficiency(batch) -> float:
    return batch.attention_mask.sum().item() / batch.attention_mask.numel()


def test_every_sample_is_placed_once_in_rows_of_at_most_pack_length():
    lengths = long_tailed_lengths(64, seed=0)
    rows = pack_rows(lengths, pack_length=400)
    assert sorted(i for row in rows for i in row) == list(range(64))
    assert all(sum(lengths[i] for i in row) <= 400 for row in rows)
    assert all(row == sorted(row) for row in rows)


def test_a_sample_longer_than_pack_length_gets_its_own_row():
    rows = pack_rows([10, 300, 10], pack_length=100)
    assert [1] in rows and sorted(i for row in rows for i in row) == [0, 1, 2]


def test_pack_length_must_be_positive():
    with pytest.raises(ValueError, match="pack_length"):
        pack_rows([3, 4], pack_length=0)


@pytest.mark.parametrize("seed", range(5))
def test_long_tailed_batches_waste_under_5_percent_of_positions(seed):
    lengths = long_tailed_lengths(16, seed)
    rows = pack_rows(lengths, pack_length=512)
    width = max(sum(lengths[i] for i in row) for row in rows)
    assert sum(lengths) / (width * len(rows)) >= 0.95
    assert sum(lengths) / (max(lengths) * len(lengths)) < 0.9  # what padding alone gives on the same batch


def samples(module, captions: list[str], seed: int = 0) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    builder = SequenceBuilder(module.text_tokenizer, module.num_image_tokens(IMAGE_SIZE))
    return [{"image": torch.randint(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=torch.uint8,
                                    generator=generator).numpy(),
             "sequence": builder.build("caption", {}, caption), "answers": [caption], "task": "caption",
             "key": str(i)} for i, caption in enumerate(captions)]


CAPTIONS = ["a", "a red letter q on grey", "x", "the word 'hello' in blue, small, upper left", "ok", "b c"]


def collate(module, items, pack_length=None):
    return Collator(module.text_tokenizer.pad_token_id, SkipCounter(), module.num_image_tokens(IMAGE_SIZE),
                    pack_length)(items).normalized()


def test_packed_batch_holds_the_same_tokens_in_fewer_positions():
    module = tiny_module()
    items = samples(module, CAPTIONS)
    plain, packed = collate(module, items), collate(module, items, pack_length=256)
    assert packed.packed and not plain.packed
    assert len(packed) == len(plain) == len(CAPTIONS) and packed.input_ids.shape[0] < len(CAPTIONS)
    assert efficiency(packed) > efficiency(plain)
    by_key = {key: span for key, span in zip(plain.keys, sample_spans(plain))}
    for key, (row, a, b) in zip(packed.keys, sample_spans(packed)):
        plain_row, plain_a, plain_b = by_key[key]
        assert torch.equal(packed.input_ids[row, a:b], plain.input_ids[plain_row, plain_a:plain_b])
        assert torch.equal(packed.labels[row, a:b], plain.labels[plain_row, plain_a:plain_b])
        assert torch.equal(packed.image_slots[row, a:b], plain.image_slots[plain_row, plain_a:plain_b])
        assert packed.position_ids[row, a:b].tolist() == list(range(b - a))
        assert packed.labels[row, a] == IGNORE_INDEX
    plain_rows = [by_key[key][0] for key in packed.keys]
    assert torch.equal(packed.images, plain.images[plain_rows])
    assert packed.answers == [plain.answers[r] for r in plain_rows]
    assert int(packed.image_slots.sum()) == len(CAPTIONS) * module.num_image_tokens(IMAGE_SIZE)


def loss_and_gradients(module, batch):
    module.zero_grad()
    total, parts, _ = module.compute_losses(batch)
    total.backward()
    grads = {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}
    return parts["caption"].detach(), total.detach(), grads


def test_packed_loss_and_gradients_equal_one_sample_per_row():
    module = tiny_module(stage="ett")
    items = samples(module, CAPTIONS)
    caption_plain, total_plain, grads_plain = loss_and_gradients(module, collate(module, items))
    caption_packed, total_packed, grads_packed = loss_and_gradients(module, collate(module, items, pack_length=256))
    assert torch.allclose(caption_packed, caption_plain, rtol=1e-5, atol=1e-6)
    assert torch.allclose(total_packed, total_plain, rtol=1e-5, atol=1e-6)
    assert grads_plain.keys() == grads_packed.keys()
    assert any(name.startswith("tokenizer.") for name in grads_packed)
    assert any(name.startswith("language_model.") for name in grads_packed)
    for name, grad in grads_plain.items():
        assert torch.allclose(grads_packed[name], grad, rtol=1e-4, atol=1e-6), name


def sample_spans(batch) -> list[tuple[int, int, int]]:
    """(row, start, end) of each sample's tokens, in the order of ``batch.keys``."""
    real = batch.attention_mask.bool()
    if not batch.packed:
        return [(row, 0, int(real[row].sum())) for row in range(len(batch))]
    spans = []
    for row in range(real.shape[0]):
        starts = ((batch.position_ids[row] == 0) & real[row]).nonzero().flatten().tolist()
        spans += [(row, a, b) for a, b in zip(starts, starts[1:] + [int(real[row].sum())])]
    return spans


def sample_logits(module, batch, by_sample: bool = True) -> dict[str, torch.Tensor]:
    """Each sample's logits over its own tokens, cut out of its row. ``by_sample`` passes the packed lengths
    (SDPA sample by sample); without them Hugging Face's block-diagonal mask from the position ids keeps samples
    apart."""
    segments = batch.packed_segments if by_sample else None
    with torch.no_grad():
        embeds = module.projector(module.tokenizer.encode(batch.images).embeddings)
        logits = module.language_model(batch.input_ids, None, embeds, batch.image_slots,
                                       position_ids=batch.position_ids, packed_segments=segments).logits
    return {key: logits[row, a:b] for key, (row, a, b) in zip(batch.keys, sample_spans(batch))}


@pytest.mark.parametrize("by_sample", [True, False], ids=["segment_attention", "position_ids_only"])
def test_no_attention_across_packed_samples(by_sample):
    module = tiny_module().eval()
    items = samples(module, CAPTIONS)
    plain = sample_logits(module, collate(module, items), by_sample)
    before = sample_logits(module, collate(module, items, pack_length=256), by_sample)
    for key in plain:
        assert torch.allclose(before[key], plain[key], atol=1e-5), key
    changed = samples(module, CAPTIONS[:1] + ["a" * len(CAPTIONS[1])] + CAPTIONS[2:])
    changed[1]["image"] = 255 - changed[1]["image"]
    after = sample_logits(module, collate(module, changed, pack_length=256), by_sample)
    assert not torch.allclose(after["1"], before["1"], atol=1e-3)
    for key in before:
        if key != "1":
            assert torch.allclose(after[key], before[key], atol=1e-6), key


def test_segment_maps_match_the_position_id_restarts():
    module = tiny_module()
    packed = collate(module, samples(module, CAPTIONS), pack_length=256)
    segments, real = packed.packed_segments, packed.attention_mask.bool()
    spans = sample_spans(packed)
    rows, width = packed.input_ids.shape
    assert segments.gather.shape == (len(CAPTIONS), max(b - a for _, a, b in spans))
    for sample, (row, a, b) in enumerate(spans):
        assert segments.gather[sample, : b - a].tolist() == list(range(row * width + a, row * width + b))
        assert (segments.gather[sample, b - a:] == rows * width).all()
    assert (segments.scatter[~real] == segments.gather.numel()).all()
    assert sorted(segments.scatter[real].tolist()) == sorted(i for i, p in enumerate(segments.gather.flatten())
                                                             if p < rows * width)


def test_segment_attention_equals_masked_sdpa_with_grouped_heads_and_trailing_pads():
    from ett_lightning.data.batching.packed_segments import PackedSegments
    from ett_lightning.models.segment_attention import segment_sdpa_attention

    torch.manual_seed(0)
    query = torch.randn(2, 4, 12, 8, requires_grad=True)
    key, value = torch.randn(2, 2, 12, 8), torch.randn(2, 2, 12, 8)
    lengths = [[5, 7], [3, 4, 2]]
    sample = torch.tensor([[0] * 5 + [1] * 7, [0] * 3 + [1] * 4 + [2] * 2 + [3] * 3])
    allowed = (sample[:, :, None] == sample[:, None, :]) & torch.ones(12, 12, dtype=torch.bool).tril()
    expected = torch.nn.functional.scaled_dot_product_attention(
        query, key.repeat_interleave(2, dim=1), value.repeat_interleave(2, dim=1), attn_mask=allowed[:, None])
    out, _ = segment_sdpa_attention(torch.nn.Module(), query, key, value, None,
                                    packed_segments=PackedSegments.from_lengths(lengths, 12))
    assert out.shape == (2, 12, 4, 8)
    assert torch.allclose(out[0], expected[0].transpose(0, 1), atol=1e-6)
    assert torch.allclose(out[1, :9], expected[1].transpose(0, 1)[:9], atol=1e-6)
    assert torch.equal(out[1, 9:], torch.zeros(3, 4, 8))
    out.sum().backward()
    assert query.grad is not None and torch.isfinite(query.grad).all()


def test_the_language_model_runs_sdpa_sample_by_sample():
    module = tiny_module()
    assert module.language_model.model.config._attn_implementation == "ett_segment_sdpa"


def test_datamodule_packs_training_batches_and_keeps_validation_one_sample_per_row(synthetic_shards):
    from ett_lightning.data import ImageTextDataModule
    from ett_lightning.models import load_text_tokenizer

    shards = {"train_shards": str(synthetic_shards / "caption" / "train-*.tar"),
              "val_shards": str(synthetic_shards / "caption" / "val-*.tar")}
    common = dict(batch_size=8, num_workers=0, image_size=IMAGE_SIZE, shuffle_buffer=8, samples_per_epoch=16,
                  pin_memory=False, **shards)
    batches = {}
    for pack_length in (None, 400):
        dm = ImageTextDataModule(pack_length=pack_length, **common)
        dm.attach(load_text_tokenizer(None), 16)
        batches[pack_length] = (next(iter(dm.train_dataloader())), next(iter(dm.val_dataloader())))
    (plain_train, plain_val), (packed_train, packed_val) = batches[None], batches[400]
    assert packed_train.packed and packed_train.input_ids.shape[0] < len(packed_train) == 8
    assert not plain_train.packed and plain_train.input_ids.shape[0] == 8
    real = packed_train.attention_mask.bool()
    assert int(((packed_train.position_ids == 0) & real).sum()) == 8
    assert int(packed_train.image_slots.sum()) == 8 * 16
    assert not packed_val.packed and packed_val.keys == plain_val.keys
    assert torch.equal(packed_val.input_ids, plain_val.input_ids)


def test_packing_a_text_first_model_is_refused_with_the_fix():
    from ett_lightning.data import ImageTextDataModule
    from ett_lightning.models import load_text_tokenizer

    dm = ImageTextDataModule(pack_length=256)
    with pytest.raises(ValueError, match="pack_length: null"):
        dm.attach(load_text_tokenizer(None), 16, layout="text_first")
    with pytest.raises(ValueError, match="positive"):
        ImageTextDataModule(pack_length=0)


def test_long_tail_caption_shards_have_web_like_lengths(tmp_path):
    import statistics

    import webdataset as wds

    from ett_lightning.convert.synthetic import make_shards

    make_shards(tmp_path, num_train=200, num_val=8, image_size=16, samples_per_shard=200, long_tail_captions=True)
    lengths = [len(s["txt"]) for s in wds.WebDataset(str(tmp_path / "caption" / "train-000000.tar"),
                                                     shardshuffle=False)]
    assert min(lengths) >= 1 and max(lengths) <= 80
    assert 8 <= statistics.median(lengths) <= 16
    assert sum(n > 40 for n in lengths) >= 5
