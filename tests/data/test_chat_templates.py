"""Conversations under the published chat templates of three LLM families (tests/data/chat_templates): the text is
``apply_chat_template``'s token for token, and every assistant turn is labelled once, as the full render shows it.

Qwen3 keeps a ``<think>`` block only on turns after the last user query and its generation prompt opens one, so
its render of the conversation up to a turn is no prefix of the full render; DeepSeek-R1 drops reasoning from
every turn; Llama-3 trims contents. Qwen3's hybrid variant (generation prompt without ``<think>``) is derived from
the stored template."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from ett_lightning.data.batching.collate import Collator
from ett_lightning.data.sequences.conversation import read_messages
from ett_lightning.data.sequences.sequence_builder import SequenceBuilder
from ett_lightning.data.skips import SkipCounter
from ett_lightning.models import load_text_tokenizer
from tests.chat_model import make_tokenizer_dir
from tests.data.test_chat_fast_path import builders
from tests.data.test_conversation import labelled_texts, template_ids, without_slots

TEMPLATES = Path(__file__).parent / "chat_templates"
N = 6
QWEN3_THINKING_PROMPT = "{{- '<|im_start|>assistant\\n<think>\\n' }}"
QWEN3_HYBRID_PROMPT = ("{{- '<|im_start|>assistant\\n' }}\n    {%- if enable_thinking is defined and enable_thinking "
                       "is false %}\n        {{- '<think>\\n\\n</think>\\n\\n' }}\n    {%- endif %}")


@dataclass(frozen=True)
class Family:
    template: str
    special_tokens: list[str]
    eos: str
    pad: str | None = None
    bos: str | None = None
    added_tokens: tuple[str, ...] = ("<think>", "</think>")


def qwen3(thinking_prompt: bool) -> str:
    template = (TEMPLATES / "qwen3.jinja").read_text()
    assert QWEN3_THINKING_PROMPT in template
    return template if thinking_prompt else template.replace(QWEN3_THINKING_PROMPT, QWEN3_HYBRID_PROMPT)


FAMILIES = {
    "qwen3": Family(qwen3(True), ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], "<|im_end|>", "<|endoftext|>"),
    "qwen3_hybrid": Family(qwen3(False), ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], "<|im_end|>",
                           "<|endoftext|>"),
    "deepseek_r1": Family((TEMPLATES / "deepseek_r1_distill.jinja").read_text(),
                          ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>"],
                          "<｜end▁of▁sentence｜>", bos="<｜begin▁of▁sentence｜>"),
    "llama3": Family((TEMPLATES / "llama3_instruct.jinja").read_text(),
                     ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                      "<|eot_id|>"], "<|eot_id|>", bos="<|begin_of_text|>", added_tokens=()),
}
THOUGHT = "<think>\nThe letters are green.\n</think>\n\n"
CONVERSATIONS = {
    "llava": {"conversations": [
        {"from": "human", "value": "<image>\nWhat is written in the image?"}, {"from": "gpt", "value": "hello"},
        {"from": "human", "value": "What colour is the text?"}, {"from": "gpt", "value": "It is green."}]},
    "system and three answers": {"messages": [
        {"role": "system", "content": "You are a careful assistant."},
        {"role": "user", "content": "<image>\nDescribe the picture."}, {"role": "assistant", "content": "A square."},
        {"role": "user", "content": "What is written?"}, {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "Is there a circle?"}, {"role": "assistant", "content": "Yes, there is one."}]},
    "thinking in every answer": {"messages": [
        {"role": "user", "content": "<image>\nWhat colour is the text?"},
        {"role": "assistant", "content": THOUGHT + "It is green."},
        {"role": "user", "content": "Are you sure?"}, {"role": "assistant", "content": THOUGHT + "Yes."}]},
}
VISIBLE = {"llava": ["hello", "It is green."], "system and three answers": ["A square.", "hello", "Yes, there is one."],
           "thinking in every answer": ["It is green.", "Yes."]}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory):
    spec = FAMILIES[request.param]
    directory = make_tokenizer_dir(tmp_path_factory.mktemp(request.param), spec.template, spec.special_tokens,
                                   spec.eos, spec.pad, spec.bos, spec.added_tokens)
    return request.param, spec, load_text_tokenizer(str(directory))


def built(tokenizer, conversation: dict, max_text_tokens: int = 1024):
    builder = SequenceBuilder(tokenizer, N, max_text_tokens=max_text_tokens)
    messages = read_messages(conversation)
    return builder, messages, builder.build("conversation", {"messages": messages}, "")


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_the_text_is_the_templates_and_every_answer_is_labelled_once(family, name):
    family_name, spec, tokenizer = family
    builder, messages, sequence = built(tokenizer, CONVERSATIONS[name])
    assert without_slots(sequence, builder) == template_ids(tokenizer, messages)
    labelled = labelled_texts(tokenizer, sequence)
    assert len(labelled) == len(VISIBLE[name])
    for text, answer in zip(labelled, VISIBLE[name]):
        assert text.endswith(answer + spec.eos), (family_name, text)
        assert "user" not in text.lower() and "system" not in text.lower()
    assert not sequence.truncated


def test_qwen3_labels_what_the_model_writes_after_its_generation_prompt(family):
    """History turns as the full render shows them (no think block); the last turn's reasoning is labelled from
    where the generation prompt stops, so the prompt before it is the template's own."""
    family_name, _, tokenizer = family
    if not family_name.startswith("qwen3"):
        pytest.skip("Qwen3 templates only")
    builder, messages, sequence = built(tokenizer, CONVERSATIONS["thinking in every answer"])
    opened = "" if family_name == "qwen3" else "<think>\n"
    assert labelled_texts(tokenizer, sequence) == [
        "It is green.<|im_end|>", opened + "The letters are green.\n</think>\n\nYes.<|im_end|>"]
    prompt = sequence.input_ids[:sequence.target_start]
    prompt = prompt[:sequence.slot_start] + prompt[sequence.slot_start + N:]
    assert prompt == template_ids(tokenizer, messages[:-1], generation_prompt=True)
    _, _, plain = built(tokenizer, CONVERSATIONS["llava"])
    assert labelled_texts(tokenizer, plain)[-1] == opened + "\n</think>\n\nIt is green.<|im_end|>"


def test_truncation_keeps_whole_answers(family):
    _, spec, tokenizer = family
    conversation = CONVERSATIONS["system and three answers"]
    _, _, full = built(tokenizer, conversation)
    eos_id = tokenizer.convert_tokens_to_ids(spec.eos)
    second_end = [i for i, label in enumerate(full.labels) if label == eos_id][1] + 1
    _, _, cut = built(tokenizer, conversation, max_text_tokens=second_end - N + 2)
    assert cut.truncated and second_end <= len(cut.input_ids) <= second_end + 2 < len(full.input_ids)
    assert cut.input_ids == full.input_ids[:len(cut.input_ids)]
    assert labelled_texts(tokenizer, cut) == labelled_texts(tokenizer, full)[:2]


def test_packed_rows_keep_every_label(family):
    _, _, tokenizer = family
    samples = []
    for index, name in enumerate(sorted(CONVERSATIONS)):
        _, _, sequence = built(tokenizer, CONVERSATIONS[name])
        samples.append({"image": np.zeros((8, 8, 3), np.uint8), "sequence": sequence,
                        "answers": [""], "task": "conversation", "key": str(index)})
    skips = SkipCounter()
    batch = Collator(tokenizer.pad_token_id, skips, N, pack_length=512)(samples)
    expected = sum(sum(label != -100 for label in s["sequence"].labels) for s in samples)
    assert int((batch.labels != -100).sum()) == expected and skips.total == 0


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_the_skeleton_fast_path_equals_rendering_every_turn(family, name):
    """Qwen3's skeleton holds where contents carry no reasoning; contents it rewrites take the rendering path."""
    _, _, tokenizer = family
    messages = read_messages(CONVERSATIONS[name])
    fast, slow = builders(tokenizer)
    for _ in range(2):
        assert fast.build(messages) == slow.build(messages)
