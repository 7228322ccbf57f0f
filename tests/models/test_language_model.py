import pytest
import torch

from ett_lightning.models import IMAGE_BEGIN, IMAGE_END, LanguageModel
from tests.conftest import TINY_LLM


def test_markers_added_and_embeddings_grow_only_when_needed():
    lm = LanguageModel(config={**TINY_LLM, "vocab_size": 300})
    assert lm.tokenizer.convert_ids_to_tokens([lm.image_begin_id, lm.image_end_id]) == [IMAGE_BEGIN, IMAGE_END]
    assert lm.model.get_input_embeddings().num_embeddings == 300
    small = LanguageModel(config={**TINY_LLM, "vocab_size": 200})
    assert small.model.get_input_embeddings().num_embeddings == len(small.tokenizer) == 259


def test_splice_puts_image_embeddings_exactly_at_slots():
    text = torch.randn(2, 7, 4)
    image = torch.randn(2, 3, 4, requires_grad=True)
    slots = torch.zeros(2, 7, dtype=torch.bool)
    slots[0, 1:4] = True
    slots[1, 2:5] = True
    out = LanguageModel.splice(text, image, slots)
    assert torch.equal(out[0, 1:4], image[0].detach()) and torch.equal(out[1, 2:5], image[1].detach())
    assert torch.equal(out[~slots], text[~slots])
    out.sum().backward()
    assert torch.equal(image.grad, torch.ones_like(image))


def test_splice_rejects_wrong_slot_count():
    slots = torch.zeros(1, 5, dtype=torch.bool)
    slots[0, :2] = True
    with pytest.raises(RuntimeError, match="exactly 3 slots"):
        LanguageModel.splice(torch.randn(1, 5, 4), torch.randn(1, 3, 4), slots)


def test_save_pretrained_round_trip(tmp_path):
    torch.manual_seed(0)
    built = LanguageModel(config=TINY_LLM)
    built.model.save_pretrained(tmp_path)
    built.tokenizer.save_pretrained(tmp_path)
    loaded = LanguageModel(pretrained=str(tmp_path))
    assert loaded.tokenizer.get_vocab() == built.tokenizer.get_vocab()
    ids = torch.tensor([loaded.tokenizer("hello 42").input_ids])
    mask = torch.ones_like(ids)
    assert torch.equal(loaded(ids, mask).logits, built(ids, mask).logits)


def test_missing_pretrained_path_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="Download it once"):
        LanguageModel(pretrained=str(tmp_path / "no-such-model"))


def test_needs_exactly_one_source():
    with pytest.raises(ValueError, match="exactly one"):
        LanguageModel()


def test_gradient_checkpointing_switch():
    lm = LanguageModel(config=TINY_LLM, gradient_checkpointing=True)
    assert lm.model.is_gradient_checkpointing
