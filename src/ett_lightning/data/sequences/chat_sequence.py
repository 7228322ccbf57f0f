"""Conversation -> tokens through the LLM's chat template, image tokens at the placeholder, labels on the answers.

The text is exactly what ``tokenizer.apply_chat_template(messages)`` renders and tokenizes, with the ``<image>``
placeholder replaced by the image markers and N image slots between them. Labels are the assistant turns' tokens
through their end-of-turn token (the tokenizer's EOS); system and user turns, the template's own text and the
image are -100. Each assistant turn is found by rendering the conversation up to it with the generation prompt:
what follows that prefix, up to the end of the turn, is the answer; where the template renders history
differently from the last turn (Qwen3), it is the turn as the full render shows it (:func:`answer_spans`). Those
renders are done once per sequence of roles (:class:`ChatSkeleton`) and the text is tokenized between its special
tokens with a memo (:class:`SegmentEncoder`): a conversation costs one render and the tokenization of its new
text.
"""

from __future__ import annotations

from bisect import bisect_left

from transformers import PreTrainedTokenizerBase
from transformers.utils import chat_template_utils

from ett_lightning.data.sequences.chat_skeleton import ChatSkeleton, answer_spans
from ett_lightning.data.sequences.conversation import IMAGE_PLACEHOLDER
from ett_lightning.data.sequences.segment_encoder import SegmentEncoder
from ett_lightning.data.sequences.token_sequence import IGNORE_INDEX, TokenSequence
from ett_lightning.data.skips import SkipSample
from ett_lightning.models.text_tokenizer import IMAGE_BEGIN, IMAGE_END

DEFAULT_CHAT_TEMPLATE = (
    "{% if bos_token %}{{ bos_token }}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}Assistant: {{ message['content'] }}{{ eos_token }}\n"
    "{% else %}{{ message['role'] | capitalize }}: {{ message['content'] }}\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
"""For tokenizers without a chat template (the byte-level one of the demo models):
``User: <image>\\nWhat is written?\\nAssistant: A<eos>\\n``, the generation prompt ``Assistant:``."""


def compiled_template(template: str):
    """Hugging Face's compiled jinja template (its sandboxed environment, filters and globals), or None where this
    transformers version does not expose it. A copy of our own whose globals are a plain dict: jinja keeps them as
    a ChainMap over the environment's and flattens that on every render, half the render time of a conversation."""
    compile_template = getattr(chat_template_utils, "_compile_jinja_template", None)
    if compile_template is None:
        return None
    shared = compile_template(template)
    own = shared.environment.from_string(template)
    own.globals = dict(shared.globals)
    return own


class ChatSequenceBuilder:
    """Builds :class:`TokenSequence` s for conversations; ``max_text_tokens`` bounds the templated text (image slots
    not counted). A longer conversation is cut after the last assistant turn that fits, never before the image;
    one whose first answer does not fit is skipped."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, num_image_tokens: int, max_text_tokens: int) -> None:
        self.tokenizer = tokenizer
        self.num_image_tokens = num_image_tokens
        self.max_text_tokens = max_text_tokens
        template = tokenizer.chat_template
        self.template = template if isinstance(template, str) and template else DEFAULT_CHAT_TEMPLATE
        self.begin_id = tokenizer.convert_tokens_to_ids(IMAGE_BEGIN)
        self.eos_id, self.pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
        self.compiled = compiled_template(self.template)
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self.segments = SegmentEncoder(backend) if backend is not None else None
        self.special_tokens = dict(tokenizer.special_tokens_map)
        self.skeletons: dict[tuple[str, ...], ChatSkeleton | None] = {}

    def __getstate__(self) -> dict:
        """Without the compiled template, which does not pickle: DataLoader workers started by spawn or forkserver
        (macOS, Python >= 3.14) receive the builder pickled and compile it again."""
        return {**self.__dict__, "compiled": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.compiled = compiled_template(self.template)

    def render(self, messages: list[dict[str, str]], generation_prompt: bool = False) -> str:
        """``apply_chat_template(messages, tokenize=False)``. With plain string messages that is the compiled
        template rendered with the tokenizer's special tokens, which this calls directly where Hugging Face exposes
        it: a third of the time (the tests compare with ``apply_chat_template`` token for token)."""
        if self.compiled is None:
            return self.tokenizer.apply_chat_template(messages, chat_template=self.template, tokenize=False,
                                                      add_generation_prompt=generation_prompt)
        return self.compiled.render(messages=messages, tools=None, documents=None,
                                    add_generation_prompt=generation_prompt, **self.special_tokens)

    def encode(self, text: str) -> tuple[list[int], list[int]]:
        """Token ids and the character offset each starts at: the fast tokenizer's backend, by segments, when there
        is one (the same ids as ``tokenizer(text, add_special_tokens=False)``), else the call."""
        if self.segments is not None:
            return self.segments.encode(text)
        encoding = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(encoding["input_ids"]), [start for start, _ in encoding["offset_mapping"]]

    def build(self, messages: list[dict[str, str]]) -> TokenSequence:
        marked = [{**m, "content": m["content"].replace(IMAGE_PLACEHOLDER, IMAGE_BEGIN + IMAGE_END)} for m in messages]
        text = self.render(marked)
        ids, starts = self.encode(text)
        try:
            image_at = ids.index(self.begin_id)
        except ValueError:
            raise SkipSample("the chat template dropped the <image> placeholder") from None
        labels = [IGNORE_INDEX] * len(ids)
        answers = []
        for first_char, end_char in self.answer_spans(marked, text):
            first, turn_end = bisect_left(starts, first_char), bisect_left(starts, end_char)
            last = self.through_end_of_turn(ids, first, turn_end)
            labels[first:last] = ids[first:last]
            answers.append((first, turn_end))
        keep, truncated = self.kept_length(answers, len(ids), image_at)
        target_start = max(first for first, end in answers if end <= keep)
        shift = self.num_image_tokens if target_start > image_at else 0
        return TokenSequence(ids[:keep], labels[:keep], image_at + 1, self.num_image_tokens, target_start + shift,
                        self.pad_id, truncated)

    def answer_spans(self, marked: list[dict[str, str]], text: str) -> list[tuple[int, int]]:
        """(first, end) character offsets in ``text`` of each assistant turn: from the end of the generation
        prompt to the end of the turn. From the role sequence's skeleton when filling it in gives ``text``, else
        by rendering the conversation up to each answer."""
        roles = tuple(m["role"] for m in marked)
        if roles not in self.skeletons:
            self.skeletons[roles] = ChatSkeleton.of(self.render, roles, self.tokenizer.eos_token)
        skeleton = self.skeletons[roles]
        if skeleton is not None:
            filled, spans = skeleton.fill([m["content"] for m in marked])
            if filled == text:
                return spans
        return self.rendered_answer_spans(marked, text)

    def rendered_answer_spans(self, marked: list[dict[str, str]], text: str) -> list[tuple[int, int]]:
        spans = answer_spans(self.render, marked, text, self.tokenizer.eos_token)
        if spans is None:
            raise SkipSample("the chat template renders earlier turns differently once later turns follow, and no "
                             "end-of-turn token closes the answer")
        return spans

    def through_end_of_turn(self, ids: list[int], first: int, turn_end: int) -> int:
        """End of the labelled part of an answer: through its first EOS (the end-of-turn token), else the turn."""
        try:
            return ids.index(self.eos_id, first, turn_end) + 1
        except ValueError:
            return turn_end

    def kept_length(self, answers: list[tuple[int, int]], length: int, image_at: int) -> tuple[int, bool]:
        """How many text tokens to keep: all when they fit, else up to the end of the last assistant turn that fits
        and comes after the image."""
        if length <= self.max_text_tokens:
            return length, False
        fitting = [end for first, end in answers if end <= self.max_text_tokens and end > image_at + 1]
        if not fitting:
            raise SkipSample("conversation longer than max_text_tokens up to its first answer")
        return max(fitting), True

