"""The conversation fast path (one render per conversation, tokenization by memoised segments) gives exactly what
rendering every prefix and tokenizing the whole text gives, and steps aside where a template or tokenizer breaks
its assumptions."""

from __future__ import annotations

import pickle

import pytest
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

from ett_lightning.data.sequences.chat_sequence import DEFAULT_CHAT_TEMPLATE, ChatSequenceBuilder
from ett_lightning.data.sequences.chat_skeleton import ChatSkeleton
from ett_lightning.data.sequences.conversation import read_messages
from ett_lightning.data.sequences.segment_encoder import SegmentEncoder
from ett_lightning.models import load_text_tokenizer

N = 4
CONVERSATIONS = [
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "<image>\nWhat is written?"},
     {"role": "assistant", "content": "hello"}, {"role": "user", "content": "Colour?"},
     {"role": "assistant", "content": "It is red."}],
    [{"role": "user", "content": "What is written? <image>"}, {"role": "assistant", "content": " 7 "},
     {"role": "user", "content": "And the shape?"}, {"role": "assistant", "content": "A circle.\n"}],
    [{"role": "user", "content": "<image>Describe it."}, {"role": "assistant", "content": "A blue A on stripes."}],
]
TRIMMING_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] | trim }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SYSTEM_DROPPING_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class SlowBuilder(ChatSequenceBuilder):
    """The reference: every prefix rendered, the whole text tokenized."""

    def answer_spans(self, marked, text):
        return self.rendered_answer_spans(marked, text)

    def encode(self, text):
        return self.segments.whole(text)


def builders(tokenizer):
    return ChatSequenceBuilder(tokenizer, N, 1024), SlowBuilder(tokenizer, N, 1024)


@pytest.mark.parametrize("conversation", range(len(CONVERSATIONS)))
def test_fast_path_equals_rendering_every_prefix_and_tokenizing_whole(chat_tokenizer, conversation):
    messages = read_messages({"messages": CONVERSATIONS[conversation]})
    for tokenizer in (chat_tokenizer, load_text_tokenizer(None)):
        fast, slow = builders(tokenizer)
        for _ in range(2):
            assert fast.build(messages) == slow.build(messages)


def test_one_render_per_conversation_once_its_roles_are_known(chat_tokenizer):
    builder = ChatSequenceBuilder(chat_tokenizer, N, 1024)
    renders = []
    render = builder.render
    builder.render = lambda *args, **kwargs: renders.append(args) or render(*args, **kwargs)
    first, second = CONVERSATIONS[1], [{**m, "content": m["content"] + " again"} for m in CONVERSATIONS[1]]
    builder.build(read_messages({"messages": first}))
    renders.clear()
    builder.build(read_messages({"messages": second}))
    assert len(renders) == 1


@pytest.mark.parametrize("template", [TRIMMING_TEMPLATE, SYSTEM_DROPPING_TEMPLATE])
def test_templates_that_edit_or_drop_contents_take_the_full_path(chat_tokenizer, template):
    tokenizer = load_text_tokenizer(None)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = template
    messages = read_messages({"messages": CONVERSATIONS[0] if template == SYSTEM_DROPPING_TEMPLATE
                              else CONVERSATIONS[1]})
    fast, slow = builders(tokenizer)
    assert fast.build(messages) == slow.build(messages)
    roles = tuple(m["role"] for m in messages)
    skeleton = fast.skeletons[roles]
    if template == SYSTEM_DROPPING_TEMPLATE:
        assert skeleton is None
    else:
        assert skeleton.fill([m["content"] for m in messages])[0] != fast.render(messages)


def test_skeleton_spans_are_the_rendered_prefixes():
    tokenizer = load_text_tokenizer(None)
    builder = ChatSequenceBuilder(tokenizer, N, 1024)
    assert builder.template == DEFAULT_CHAT_TEMPLATE
    messages = read_messages({"messages": CONVERSATIONS[0]})
    skeleton = ChatSkeleton.of(builder.render, [m["role"] for m in messages], tokenizer.eos_token)
    text, spans = skeleton.fill([m["content"] for m in messages])
    assert text == builder.render(messages)
    assert [text[first:end] for first, end in spans] == [" hello<|endoftext|>\n", " It is red.<|endoftext|>\n"]


def test_segments_give_the_whole_text_ids_and_offsets_and_are_memoised(chat_tokenizer):
    fast, _ = builders(chat_tokenizer)
    texts = [fast.render(read_messages({"messages": c})) for c in CONVERSATIONS]
    encoder = SegmentEncoder(chat_tokenizer.backend_tokenizer)
    assert "<|im_start|>" in encoder.special
    for text in texts:
        assert encoder.by_segments(text) == encoder.whole(text)
    memo = dict(encoder.memo)
    assert encoder.by_segments(texts[0]) == encoder.whole(texts[0])
    assert encoder.memo == memo


def byte_tokenizer(**special_token_flags) -> Tokenizer:
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.add_special_tokens([AddedToken("<|end|>", special=True, normalized=False, **special_token_flags)])
    return backend


def test_special_tokens_that_strip_whitespace_are_not_split_at():
    assert SegmentEncoder(byte_tokenizer()).special == {"<|end|>": 256}
    stripping = SegmentEncoder(byte_tokenizer(lstrip=True, rstrip=True))
    assert stripping.special == {}
    text = "a b  <|end|>  c"
    assert stripping.encode(text) == stripping.whole(text)


def test_first_word_marking_pre_tokenizers_turn_splitting_off():
    backend = byte_tokenizer()
    backend.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    assert SegmentEncoder(backend).special == {}


def test_a_difference_found_while_verifying_turns_splitting_off_with_a_warning():
    backend = byte_tokenizer(rstrip=True)
    encoder = SegmentEncoder(backend)
    encoder.special = {"<|end|>": 256}
    encoder.splitter = SegmentEncoder(byte_tokenizer()).splitter
    text = "question<|end|>   answer"
    with pytest.warns(UserWarning, match="tokenized whole"):
        assert encoder.encode(text) == encoder.whole(text)
    assert encoder.splitter is None


def test_the_builder_pickles_for_spawned_dataloader_workers(chat_tokenizer):
    builder = ChatSequenceBuilder(chat_tokenizer, N, 1024)
    messages = read_messages({"messages": CONVERSATIONS[0]})
    copy = pickle.loads(pickle.dumps(builder))
    assert copy.compiled is not None and copy.build(messages) == builder.build(messages)
