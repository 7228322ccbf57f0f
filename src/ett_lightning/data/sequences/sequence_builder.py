"""Turns a prompt and a target text into LLM token ids with image slots and masked labels."""

from __future__ import annotations

from typing import Any, Literal

from transformers import PreTrainedTokenizerBase

from ett_lightning.data.sequences.chat_sequence import ChatSequenceBuilder
from ett_lightning.data.sequences.token_sequence import IGNORE_INDEX, TokenSequence
from ett_lightning.data.skips import SkipSample
from ett_lightning.models.text_tokenizer import IMAGE_BEGIN, IMAGE_END

__all__ = ["IGNORE_INDEX", "SequenceBuilder", "TokenSequence"]
DEFAULT_TEMPLATES = {
    "caption": "Describe the image.",
    "vqa": "Question: {question} Answer:",
    "text_to_image": "{caption}",
}
Layout = Literal["image_first", "text_first"]


class SequenceBuilder:
    """Two layouts, chosen by the model being trained (its ``sequence_layout``):

    - ``image_first`` (understanding): ``[bos] <image_begin> slot x N <image_end> prompt target <eos>``. Labels
      are -100 on bos, markers, image slots and prompt, so the loss covers only the target and its EOS.
      ``max_text_tokens`` bounds prompt + target: the target is truncated (and keeps its EOS); a prompt is never
      cut, and one that leaves no room for an answer token skips the sample (:class:`SkipSample`): a question cut
      in the middle would train, or be answered, as another question.
    - ``text_first`` (generation): ``[bos] caption <image_begin> slot x N <image_end> <eos>``, the caption put
      through the ``text_to_image`` template. Every label is -100: the targets are the image's codebook
      indices, which the model computes on the device. Only caption samples have this layout.

    Conversation samples (``task="conversation"``, ``fields["messages"]``) go through the LLM's chat template
    (:class:`ChatSequenceBuilder`); they need the ``image_first`` layout. Image slots hold the pad id; the model
    overwrites their embeddings. A sequence whose text was cut to fit ``max_text_tokens`` is marked ``truncated``.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        num_image_tokens: int,
        templates: dict[str, str] | None = None,
        max_text_tokens: int = 128,
        layout: Layout = "image_first",
    ) -> None:
        if layout not in ("image_first", "text_first"):
            raise ValueError(f"sequence layout must be 'image_first' or 'text_first', got {layout!r}")
        self.layout = layout
        self.tokenizer = tokenizer
        self.num_image_tokens = num_image_tokens
        self.templates = {**DEFAULT_TEMPLATES, **(templates or {})}
        self.max_text_tokens = max_text_tokens
        markers = tokenizer.convert_tokens_to_ids([IMAGE_BEGIN, IMAGE_END])
        self.begin_id, self.end_id = markers
        self.bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        self._prompt_ids: dict[str, list[int]] = {}
        self.chat = ChatSequenceBuilder(tokenizer, num_image_tokens, max_text_tokens)

    def prompt(self, task: str, fields: dict[str, Any]) -> str:
        if task not in self.templates:
            raise KeyError(f"no prompt template for task {task!r}; templates exist for {sorted(self.templates)}")
        return self.templates[task].format(**fields)

    def build(self, task: str, fields: dict[str, Any], target: str) -> TokenSequence:
        if self.layout == "text_first":
            return self.build_text_first(task, target)
        if task == "conversation":
            return self.chat.build(fields["messages"])
        prompt_ids = self.prompt_ids(self.prompt(task, fields))
        budget = self.max_text_tokens - 1 - len(prompt_ids)
        if budget < 1:
            raise SkipSample(f"prompt too long: {len(prompt_ids)} tokens leave no room for an answer within "
                             f"{self.max_text_tokens} text tokens")
        target_ids = self.encode(" " + target.strip())
        truncated = len(target_ids) > budget
        target_ids = target_ids[: budget] + [self.tokenizer.eos_token_id]
        context = self.bos + [self.begin_id, self.end_id] + prompt_ids
        labels = [IGNORE_INDEX] * len(context) + target_ids
        return TokenSequence(context + target_ids, labels, len(self.bos) + 1, self.num_image_tokens,
                        len(context) + self.num_image_tokens, self.tokenizer.pad_token_id, truncated)

    def build_text_first(self, task: str, caption: str) -> TokenSequence:
        if task != "caption":
            raise SkipSample(f"a {task} sample has no caption to generate from (text_first layout)")
        prefix = self.generation_prefix(caption)
        text_ids = prefix + [self.end_id, self.tokenizer.eos_token_id]
        return TokenSequence(text_ids, [IGNORE_INDEX] * len(text_ids), len(prefix), self.num_image_tokens, len(prefix),
                        self.tokenizer.pad_token_id)

    def generation_prefix(self, caption: str) -> list[int]:
        """``[bos] caption <image_begin>``: what image generation continues from."""
        caption_ids = self.prompt_ids(self.prompt("text_to_image", {"caption": caption.strip()}))
        return self.bos + caption_ids[: self.max_text_tokens] + [self.begin_id]

    def prompt_ids(self, prompt: str) -> list[int]:
        """Token ids of a prompt, memoised: caption prompts repeat for every sample."""
        if prompt not in self._prompt_ids:
            if len(self._prompt_ids) > 10_000:
                self._prompt_ids.clear()
            self._prompt_ids[prompt] = self.encode(prompt)
        return self._prompt_ids[prompt]

    def encode(self, text: str) -> list[int]:
        """Token ids without special tokens, uncut; straight through the Rust tokenizer when there is one."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:
            return backend.encode(text, add_special_tokens=False).ids
        return self.tokenizer.encode(text, add_special_tokens=False)
