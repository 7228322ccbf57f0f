"""Text generation from prompts with spliced image tokens: the one path every answer in this package takes
(``ETTModule.generate`` in validation and ``predict``, ``ett ask``, the lmms-eval model)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor
from transformers import GenerationConfig, PreTrainedModel

from ett_lightning.models.language_model import LanguageModel


@dataclass(frozen=True)
class Decoding:
    """How answers are decoded.

    Args:
        max_new_tokens: the longest answer, in LLM tokens.
        temperature: 0 decodes greedily; above 0 samples from the softmax at this temperature.
        top_p: nucleus sampling's probability mass (sampling only).
        stop: strings that end an answer; the text from the first one on is cut (lmms-eval's ``until``).
        model_defaults: also apply the LLM's own ``generation_config.json`` (an Instruct model's
            ``repetition_penalty``, ``top_k``, ...). Off: greedy is plain argmax decoding and sampling uses only the
            settings above, whatever the model's files say.
    """

    max_new_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = field(default_factory=tuple)
    model_defaults: bool = False

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"temperature must be >= 0 and top_p in (0, 1], got {self.temperature}, {self.top_p}")

    def sampling_arguments(self) -> dict[str, object]:
        """Hugging Face ``generate`` arguments: greedy, or sampling with temperature and top-p."""
        if self.temperature == 0:
            return {"do_sample": False}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p}

    def cut(self, text: str) -> str:
        """``text`` up to the first stop string, without outer whitespace."""
        for stop in self.stop:
            if stop:
                text = text.split(stop, 1)[0]
        return text.strip()


GREEDY = Decoding()
"""Greedy decoding of up to 16 tokens: what validation and ``ett ask`` use unless told otherwise."""


def left_padded_prompts(input_ids: Tensor, image_slots: Tensor, prompt_lengths: Tensor,
                        pad_id: int) -> tuple[Tensor, Tensor, Tensor]:
    """The first ``prompt_lengths[r]`` tokens of each right-padded row, moved to the right end of a row as long as
    the longest prompt, so every prompt ends where generation starts: (ids, image slots, attention mask)."""
    length = int(prompt_lengths.max())
    ids = torch.full((len(input_ids), length), pad_id, dtype=input_ids.dtype, device=input_ids.device)
    slots = torch.zeros_like(ids, dtype=torch.bool)
    mask = torch.zeros_like(ids)
    for row, start in enumerate(prompt_lengths.tolist()):
        ids[row, length - start:] = input_ids[row, :start]
        slots[row, length - start:] = image_slots[row, :start]
        mask[row, length - start:] = 1
    return ids, slots, mask


@torch.no_grad()
def generate_text(language_model: LanguageModel, image_embeds: Tensor, input_ids: Tensor, image_slots: Tensor,
                  prompt_lengths: Tensor, decoding: Decoding = GREEDY, synced_gpus: bool = False) -> list[str]:
    """Continues each row's prompt (its first ``prompt_lengths[r]`` tokens, image slots included) with the KV
    cache, until EOS or ``decoding.max_new_tokens``, and returns the decoded continuations cut at the stop strings.

    Prompts are left padded with an attention mask, so a row's answer does not depend on the other rows of its
    batch. ``synced_gpus`` keeps every rank generating until all are done (sharded models: every forward is a
    collective).
    """
    lm = language_model
    ids, slots, attention_mask = left_padded_prompts(input_ids, image_slots, prompt_lengths, lm.tokenizer.pad_token_id)
    inputs_embeds = lm.splice(lm.embed(ids), image_embeds, slots)
    with generation_defaults(lm.causal_lm, decoding.model_defaults):
        generated = lm.model.generate(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, max_new_tokens=decoding.max_new_tokens,
            use_cache=True, eos_token_id=lm.tokenizer.eos_token_id, pad_token_id=lm.tokenizer.pad_token_id,
            synced_gpus=synced_gpus, **decoding.sampling_arguments(),
        )
    return [decoding.cut(text) for text in lm.tokenizer.batch_decode(generated, skip_special_tokens=True)]


@contextmanager
def generation_defaults(model: PreTrainedModel, keep: bool) -> Iterator[None]:
    """Within the block, ``model.generate`` starts from Hugging Face's plain defaults instead of the model's
    ``generation_config`` (which fills every setting a call leaves unset), unless ``keep``."""
    if keep:
        yield
        return
    own = model.generation_config
    model.generation_config = GenerationConfig()
    try:
        yield
    finally:
        model.generation_config = own
