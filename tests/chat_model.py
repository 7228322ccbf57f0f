"""A real Hugging Face model directory made in the test: a small byte-level BPE trained with ``tokenizers``, a
ChatML-style chat template, and a tiny Qwen2 model, all written with ``save_pretrained``."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a careful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "What is written in the image? The text says hello in red letters.",
    "Describe the picture. A small square image with a blue letter A on stripes.",
    "What colour is the text? It is green. Is there a circle? Yes, there is one.",
    "the text 7 in yellow on a checker background with a square and a triangle",
] * 20


def make_tokenizer_dir(directory: Path, chat_template: str, special_tokens: list[str], eos: str, pad: str | None = None,
                       bos: str | None = None, added_tokens: tuple[str, ...] = (), vocab_size: int = 400) -> Path:
    """A small byte-level BPE carrying a model family's special tokens (``added_tokens``: atomic but not special,
    like Qwen3's ``<think>``) and chat template, written with ``save_pretrained``; returns ``directory``."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=eos, pad_token=pad, bos_token=bos)
    tokenizer.add_tokens(list(added_tokens))
    tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(directory)
    return directory


def make_chat_model_dir(directory: Path, hidden_size: int = 128, vocab_size: int = 400) -> Path:
    """Writes tokenizer + tiny model to ``directory``; returns it. ``eos`` is the end-of-turn token, as in
    instruction-tuned Qwen models."""
    make_tokenizer_dir(directory, CHATML_TEMPLATE, SPECIAL_TOKENS, eos="<|im_end|>", pad="<|endoftext|>",
                       vocab_size=vocab_size)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(directory)
    config = AutoConfig.for_model("qwen2", hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  vocab_size=len(tokenizer) + 8, max_position_embeddings=1024,
                                  tie_word_embeddings=True)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    return directory
