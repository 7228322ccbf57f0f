"""Conversation samples: parsing, the LLM's chat template token for token, labels on answers, truncation."""

from __future__ import annotations

import pytest

from ett_lightning.data.sequences.chat_sequence import ChatSequenceBuilder
from ett_lightning.data.sequences.conversation import read_messages
from ett_lightning.data.sequences.sequence_builder import IGNORE_INDEX, SequenceBuilder
from ett_lightning.data.skips import SkipSample
from ett_lightning.models import load_text_tokenizer
from ett_lightning.models.text_tokenizer import IMAGE_BEGIN, IMAGE_END

N = 6
LLAVA = {"conversations": [
    {"from": "human", "value": "<image>\nWhat is written in the image?"},
    {"from": "gpt", "value": "The text says hello."},
    {"from": "human", "value": "What colour is the text?"},
    {"from": "gpt", "value": "It is green."},
]}


def template_ids(tokenizer, messages, generation_prompt=False) -> list[int]:
    """What Hugging Face's apply_chat_template gives, the placeholder written as the image markers."""
    marked = [{**m, "content": m["content"].replace("<image>", IMAGE_BEGIN + IMAGE_END)} for m in messages]
    out = tokenizer.apply_chat_template(marked, tokenize=True, add_generation_prompt=generation_prompt)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def without_slots(sequence, builder) -> list[int]:
    ids = sequence.input_ids
    return ids[: sequence.slot_start] + ids[sequence.slot_start + builder.num_image_tokens:]


def labelled_texts(tokenizer, sequence) -> list[str]:
    """The labelled tokens, decoded run by run."""
    runs, current = [], []
    for token, label in zip(sequence.input_ids, sequence.labels):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    runs += [current] if current else []
    return [tokenizer.decode(run) for run in runs]


def test_llava_and_chat_message_styles_read_to_the_same_messages():
    messages = {"messages": [{"role": "user", "content": "<image>\nWhat is written in the image?"},
                             {"role": "assistant", "content": "The text says hello."},
                             {"role": "user", "content": "What colour is the text?"},
                             {"role": "assistant", "content": "It is green."}]}
    assert read_messages(LLAVA) == read_messages(messages)
    assert [m["role"] for m in read_messages(LLAVA)] == ["user", "assistant", "user", "assistant"]


def test_without_placeholder_the_image_opens_the_first_user_turn():
    messages = read_messages({"messages": [{"role": "system", "content": "Be brief."},
                                           {"role": "user", "content": "What is it?"},
                                           {"role": "assistant", "content": "A cat."}]})
    assert messages[1]["content"] == "<image>\nWhat is it?" and messages[0]["content"] == "Be brief."


@pytest.mark.parametrize("meta, reason", [
    ({"conversations": []}, "empty conversation"),
    ({"conversations": "hi"}, "not a list of turns"),
    ({"conversations": [{"from": "robot", "value": "x"}]}, "unknown conversation role"),
    ({"conversations": [{"from": "human", "value": "<image> hi"}]}, "without an assistant turn"),
    ({"conversations": [{"from": "human", "value": "<image> a <image>"}, {"from": "gpt", "value": "b"}]},
     "more than one <image>"),
    ({"messages": [{"role": "user", "content": ["list content"]}, {"role": "assistant", "content": "x"}]},
     "without text"),
])
def test_bad_conversations_are_skipped_with_a_reason(meta, reason):
    with pytest.raises(SkipSample, match=reason):
        read_messages(meta)


def test_sequence_is_exactly_the_chat_template_with_image_slots_at_the_placeholder(chat_tokenizer):
    builder = SequenceBuilder(chat_tokenizer, N, max_text_tokens=1024)
    messages = read_messages(LLAVA)
    sequence = builder.build("conversation", {"messages": messages}, "It is green.")
    assert without_slots(sequence, builder) == template_ids(chat_tokenizer, messages)
    begin, end = chat_tokenizer.convert_tokens_to_ids([IMAGE_BEGIN, IMAGE_END])
    assert sequence.input_ids[sequence.slot_start - 1] == begin
    assert sequence.input_ids[sequence.slot_start + N] == end
    assert all(label == IGNORE_INDEX for label in sequence.labels[sequence.slot_start - 1: sequence.slot_start + N + 1])


def test_only_assistant_turns_and_their_end_of_turn_token_are_labelled(chat_tokenizer):
    builder = SequenceBuilder(chat_tokenizer, N, max_text_tokens=1024)
    sequence = builder.build("conversation", {"messages": read_messages(LLAVA)}, "It is green.")
    assert labelled_texts(chat_tokenizer, sequence) == ["The text says hello.<|im_end|>", "It is green.<|im_end|>"]
    assert len(sequence.labels) == len(sequence.input_ids) and not sequence.truncated


def test_placeholder_inside_a_turn_puts_the_image_there(chat_tokenizer):
    builder = SequenceBuilder(chat_tokenizer, N, max_text_tokens=1024)
    messages = read_messages({"messages": [{"role": "user", "content": "Look at this: <image> What is written?"},
                                           {"role": "assistant", "content": "hello"}]})
    sequence = builder.build("conversation", {"messages": messages}, "hello")
    before = chat_tokenizer.decode(sequence.input_ids[: sequence.slot_start - 1])
    assert before.endswith("<|im_start|>user\nLook at this: ")
    assert without_slots(sequence, builder) == template_ids(chat_tokenizer, messages)


def test_generation_prompt_is_the_template_up_to_the_last_answer(chat_tokenizer):
    builder = SequenceBuilder(chat_tokenizer, N, max_text_tokens=1024)
    messages = read_messages(LLAVA)
    sequence = builder.build("conversation", {"messages": messages}, "It is green.")
    prompt = sequence.input_ids[: sequence.target_start]
    prompt = prompt[: sequence.slot_start] + prompt[sequence.slot_start + N:]
    assert prompt == template_ids(chat_tokenizer, messages[:3], generation_prompt=True)
    assert chat_tokenizer.decode(sequence.input_ids[sequence.target_start:]).startswith("It is green.")


def test_default_template_for_a_tokenizer_without_one():
    tokenizer = load_text_tokenizer(None)
    builder = ChatSequenceBuilder(tokenizer, N, max_text_tokens=1024)
    messages = read_messages({"conversations": [{"from": "human", "value": "What?"}, {"from": "gpt", "value": "A"}]})
    assert builder.render(messages) == "User: <image>\nWhat?\nAssistant: A<|endoftext|>\n"
    sequence = builder.build(messages)
    assert labelled_texts(tokenizer, sequence) == [" A<|endoftext|>"]
    assert tokenizer.decode(sequence.input_ids[: sequence.target_start]).endswith("Assistant:")


def test_too_long_conversations_are_cut_after_the_last_answer_that_fits(chat_tokenizer):
    messages = read_messages(LLAVA)
    full = SequenceBuilder(chat_tokenizer, N, max_text_tokens=1024).build("conversation", {"messages": messages}, "")
    first_turn_end = len(template_ids(chat_tokenizer, messages[:2]))
    builder = SequenceBuilder(chat_tokenizer, N, max_text_tokens=first_turn_end + 3)
    cut = builder.build("conversation", {"messages": messages}, "")
    assert cut.truncated and len(cut.input_ids) == first_turn_end + N < len(full.input_ids)
    assert labelled_texts(chat_tokenizer, cut) == ["The text says hello.<|im_end|>"]
    assert chat_tokenizer.decode(cut.input_ids[cut.target_start:]).startswith("The text says hello.")
    with pytest.raises(SkipSample, match="max_text_tokens"):
        SequenceBuilder(chat_tokenizer, N, max_text_tokens=first_turn_end - 4).build(
            "conversation", {"messages": messages}, "")


def test_a_cut_never_drops_the_image(chat_tokenizer):
    messages = read_messages({"conversations": [
        {"from": "human", "value": "Hello there."}, {"from": "gpt", "value": "Hi."},
        {"from": "human", "value": "<image>\nWhat is written?"}, {"from": "gpt", "value": "hello"}]})
    length = len(template_ids(chat_tokenizer, messages))
    with pytest.raises(SkipSample, match="max_text_tokens"):
        SequenceBuilder(chat_tokenizer, N, max_text_tokens=length - 1).build("conversation", {"messages": messages}, "")
