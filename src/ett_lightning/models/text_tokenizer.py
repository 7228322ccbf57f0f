"""Text tokenizers for the LLM side: a local/hub HF tokenizer, or a byte-level one for tiny models."""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

IMAGE_BEGIN = "<|image_begin|>"
IMAGE_END = "<|image_end|>"
END_OF_TEXT = "<|endoftext|>"


def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """A 256-symbol byte-level tokenizer (no merges) plus an end-of-text token; needs no files.

    Used with LLMs built from a config dict, where no trained tokenizer exists. Every string round-trips.
    """
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=END_OF_TEXT, pad_token=END_OF_TEXT)


def load_text_tokenizer(path: str | None, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """Loads the tokenizer at ``path`` (local directory or hub id), or the byte-level one when ``path`` is None.

    Adds the image marker tokens and makes sure a pad token exists (the EOS token when the model has none).
    """
    tokenizer = byte_level_tokenizer() if path is None else _from_pretrained(path, trust_remote_code)
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_BEGIN, IMAGE_END]})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.eos_token is None:
        raise ValueError(f"text tokenizer at {path!r} has no EOS token; captions need one to end")
    return tokenizer


def _from_pretrained(path: str, trust_remote_code: bool) -> PreTrainedTokenizerBase:
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as err:
        raise FileNotFoundError(
            f"could not load the text tokenizer from {path!r}: it is not a local directory with tokenizer files "
            "and the Hugging Face hub could not provide it (offline?). Download it once, e.g. "
            f"`huggingface-cli download {path} --local-dir /models/...`, and point the recipe at that directory."
        ) from err
