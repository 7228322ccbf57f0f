import numpy as np
import pytest

from ett_lightning.data import IGNORE_INDEX
from ett_lightning.data.batching.collate import Collator
from ett_lightning.data.sequences.sequence_builder import SequenceBuilder
from ett_lightning.data.skips import SkipCounter
from ett_lightning.models import load_text_tokenizer
from ett_lightning.models.text_tokenizer import IMAGE_BEGIN, IMAGE_END

NUM_TOKENS = 12
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "<image>\nWhat is drawn?"},
            {"role": "assistant", "content": "A red q."}, {"role": "user", "content": "Which colour?"},
            {"role": "assistant", "content": "Red."}]


def sequences_of_every_builder(tokenizer):
    """One sequence from each path a builder has: caption, VQA, conversation (image_first) and text_first."""
    understanding = SequenceBuilder(tokenizer, NUM_TOKENS, max_text_tokens=64)
    generation = SequenceBuilder(tokenizer, NUM_TOKENS, layout="text_first")
    return [understanding.build("caption", {}, "a red letter q on a grey background"),
            understanding.build("vqa", {"question": "What colour is the letter?"}, "red"),
            understanding.build("conversation", {"messages": MESSAGES}, "Red."),
            generation.build("caption", {}, "a blue x")]


@pytest.fixture(params=["byte_level", "chat"])
def tokenizer(request, chat_tokenizer):
    return load_text_tokenizer(None) if request.param == "byte_level" else chat_tokenizer


def test_the_full_sequence_has_pad_slots_with_ignored_labels_between_the_text(tokenizer):
    for sequence in sequences_of_every_builder(tokenizer):
        start, end = sequence.slot_start, sequence.slot_start + NUM_TOKENS
        assert len(sequence) == len(sequence.input_ids) == len(sequence.labels) == len(sequence.text_ids) + NUM_TOKENS
        assert sequence.input_ids[start:end] == [tokenizer.pad_token_id] * NUM_TOKENS
        assert sequence.labels[start:end] == [IGNORE_INDEX] * NUM_TOKENS
        assert sequence.input_ids[:start] + sequence.input_ids[end:] == sequence.text_ids
        assert sequence.labels[:start] + sequence.labels[end:] == sequence.text_labels
        assert sequence.input_ids[start - 1] == tokenizer.convert_tokens_to_ids(IMAGE_BEGIN)
        assert sequence.input_ids[end] == tokenizer.convert_tokens_to_ids(IMAGE_END)


def test_a_sequence_built_for_another_image_size_is_refused(tokenizer):
    sequence = sequences_of_every_builder(tokenizer)[0]
    item = {"image": np.zeros((8, 8, 3), dtype=np.uint8), "sequence": sequence, "answers": ["-"], "task": "caption",
            "key": "0"}
    with pytest.raises(ValueError, match="12 image slots in a batch of images of 16 tokens"):
        Collator(tokenizer.pad_token_id, SkipCounter(), 16)([item])


@pytest.mark.parametrize("pack_length", [None, 4096])
def test_collated_rows_hold_each_sequence_exactly(tokenizer, pack_length):
    sequences = sequences_of_every_builder(tokenizer)[:3]
    items = [{"image": np.zeros((8, 8, 3), dtype=np.uint8), "sequence": q, "answers": ["-"], "task": "caption",
              "key": str(i)} for i, q in enumerate(sequences)]
    batch = Collator(tokenizer.pad_token_id, SkipCounter(), NUM_TOKENS, pack_length)(items)
    row, offset = 0, 0
    for key in batch.keys:
        sequence = sequences[int(key)]
        if pack_length is None:
            row, offset = int(key), 0
        end = offset + len(sequence.input_ids)
        assert batch.input_ids[row, offset:end].tolist() == sequence.input_ids
        assert batch.labels[row, offset:end].tolist() == sequence.labels
        assert batch.attention_mask[row, offset:end].all()
        assert batch.image_slots[row, offset:end].nonzero().flatten().tolist() == list(
            range(sequence.slot_start, sequence.slot_start + NUM_TOKENS))
        offset = end
    assert (batch.labels[batch.attention_mask == 0] == IGNORE_INDEX).all()
    assert (batch.input_ids[batch.attention_mask == 0] == tokenizer.pad_token_id).all()
