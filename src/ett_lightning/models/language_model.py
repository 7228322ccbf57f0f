"""Any Hugging Face causal LM, with image marker tokens and codebook embeddings spliced into its input."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from ett_lightning.data.batching.packed_segments import PackedSegments
from ett_lightning.models.lora import LoRA, is_adapter, plain_keys_to_adapted
from ett_lightning.models.segment_attention import SEGMENT_SDPA
from ett_lightning.models.text_tokenizer import IMAGE_BEGIN, IMAGE_END, load_text_tokenizer


class LanguageModel(nn.Module):
    """Wraps ``AutoModelForCausalLM`` built from a local path / hub id (``pretrained``) or a ``config`` dict.

    The text tokenizer comes from ``tokenizer`` (defaults to ``pretrained``; a byte-level tokenizer when both
    are None). Image begin/end markers are added to it, and the embedding matrix grows only when the new
    tokens do not fit in its existing rows. ``trust_remote_code`` stays off unless the recipe sets it.

    ``attn_implementation`` is Hugging Face's; ``"sdpa"`` runs as :mod:`~ett_lightning.models.segment_attention`
    (PyTorch SDPA, packed rows attended sample by sample), ``"flash_attention_2"`` packs with its variable-length
    kernel.

    With ``lora``, the LLM trains through low-rank adapters only (:mod:`~ett_lightning.models.lora`): ``model``
    is then a ``peft`` model, ``requires_grad_(True)`` reaches the adapters and never the LLM's own weights, and
    weights saved without adapters (an earlier stage's checkpoint) load into it through ``loadable_state``.

    Args:
        pretrained: local directory (or hub id) of a Hugging Face causal LM.
        config: a model config dict instead (e.g. ``{"model_type": "qwen2", ...}``) for a randomly initialised LLM.
        tokenizer: directory or hub id of the text tokenizer (default: ``pretrained``; byte-level when both are None).
        dtype: parameter dtype to load in (``bfloat16``, ``float16``, ``float32``); None keeps the checkpoint's.
        attn_implementation: Hugging Face attention: ``sdpa`` (packed rows attended sample by sample),
            ``flash_attention_2`` or ``eager``.
        trust_remote_code: allow model code from the checkpoint directory to run (off unless set).
        gradient_checkpointing: recompute decoder layers in the backward pass to save activation memory.
        lora: low-rank adapters to train instead of the LLM's weights (rank, alpha, dropout, target modules);
            None trains the LLM's weights themselves.
    """

    def __init__(
        self,
        pretrained: str | None = None,
        config: dict[str, Any] | None = None,
        tokenizer: str | None = None,
        dtype: str | None = None,
        attn_implementation: str = "sdpa",
        trust_remote_code: bool = False,
        gradient_checkpointing: bool = False,
        lora: LoRA | None = None,
    ) -> None:
        super().__init__()
        if (pretrained is None) == (config is None):
            raise ValueError("LanguageModel needs exactly one of `pretrained` (path or hub id) or `config` (dict)")
        self.tokenizer = load_text_tokenizer(tokenizer or pretrained, trust_remote_code)
        self.segment_attention = attn_implementation == "sdpa"
        hf_attention = SEGMENT_SDPA if self.segment_attention else attn_implementation
        self.model = build_causal_lm(pretrained, config, dtype, hf_attention, trust_remote_code)
        if len(self.tokenizer) > self.model.get_input_embeddings().num_embeddings:
            self.model.resize_token_embeddings(len(self.tokenizer))
        self.image_begin_id = self.tokenizer.convert_tokens_to_ids(IMAGE_BEGIN)
        self.image_end_id = self.tokenizer.convert_tokens_to_ids(IMAGE_END)
        self.model.config.use_cache = False
        if gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.lora = lora
        if lora is not None:
            self.model = lora.attach(self.model)

    @property
    def causal_lm(self) -> PreTrainedModel:
        """The Hugging Face model (with adapters, if any, inside its linear layers)."""
        return self.model.get_base_model() if self.lora is not None else self.model

    def requires_grad_(self, requires_grad: bool = True) -> LanguageModel:
        """As ``nn.Module.requires_grad_``, except that a LoRA LLM makes only its adapters trainable."""
        super().requires_grad_(requires_grad)
        if requires_grad and self.lora is not None:
            for name, parameter in self.named_parameters():
                parameter.requires_grad_(is_adapter(name))
        return self

    def loadable_state(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """``state`` (keys relative to this module) as this LLM names it. Weights saved without adapters (an
        earlier stage's checkpoint, for ``init_from``) are renamed to the adapted layers and joined by the current
        adapters; weights with adapters for an LLM without them are refused with the fix; any other state is returned
        as it is."""
        adapted = any(is_adapter(key) for key in state)
        if self.lora is None and adapted:
            raise ValueError("these LLM weights come with LoRA adapters, and this LLM has none: set "
                             "language_model.init_args.lora as in the run that saved them (or continue from that "
                             "run's `ett export`, whose LLM has the adapters merged)")
        return state if self.lora is None or adapted else plain_keys_to_adapted(state, self.state_dict())

    @property
    def hidden_size(self) -> int:
        return self.model.get_input_embeddings().embedding_dim

    def embed(self, input_ids: Tensor) -> Tensor:
        return self.model.get_input_embeddings()(input_ids)

    @staticmethod
    def splice(text_embeds: Tensor, image_embeds: Tensor, image_slots: Tensor) -> Tensor:
        """Writes ``image_embeds`` [B, N, C] into ``text_embeds`` [R, L, C] where ``image_slots`` [R, L] is True.

        The slots are filled in row-major order, image after image: one image per row (R = B), or several in a
        packed row. There must be exactly B x N slots. Gradient flows to ``image_embeds``.
        The slot count is checked on the device (``torch._assert_async``): reading it on the host would stall
        every step on a GPU, and a wrong count is a data-pipeline bug (num_image_tokens not matching the
        tokenizer) that stops the run either way.
        """
        torch._assert_async(
            image_slots.sum() == image_embeds.shape[0] * image_embeds.shape[1],
            f"every image needs exactly {image_embeds.shape[1]} slots (one per image token); the data pipeline's "
            "num_image_tokens must match the tokenizer",
        )
        mask = image_slots.unsqueeze(-1).expand_as(text_embeds)
        return text_embeds.masked_scatter(mask, image_embeds.to(text_embeds.dtype))

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None,
        image_embeds: Tensor | None = None,
        image_slots: Tensor | None = None,
        labels: Tensor | None = None,
        position_ids: Tensor | None = None,
        packed_segments: PackedSegments | None = None,
    ) -> CausalLMOutputWithPast:
        """Causal LM forward; with ``labels`` the output carries the mean next-token loss over labelled tokens.

        ``attention_mask`` may be None for right-padded sequences whose pads carry no labels: causal attention
        never lets a real token see the pads after it, so the loss is the same, and SDPA runs its ``is_causal``
        kernels without a materialised mask. ``position_ids`` that restart at 0 mark packed samples: the model
        keeps attention within each (block-diagonal mask for eager, variable-length flash-attention), and
        ``packed_segments`` (the batch's index maps) lets SDPA attend sample by sample.
        """
        inputs_embeds = self.embed(input_ids)
        if image_embeds is not None:
            inputs_embeds = self.splice(inputs_embeds, image_embeds, image_slots)
        packed = {}
        if packed_segments is not None and self.segment_attention:
            packed = {"packed_segments": packed_segments}
            attention_mask = prepared_mask(input_ids)
        return self.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels,
                          position_ids=position_ids, **packed)


def prepared_mask(input_ids: Tensor) -> Tensor:
    """A 4D mask stand-in: Hugging Face takes a 4D mask as prepared and builds none, so a packed forward skips the
    block-diagonal mask (and the host read of the position ids that finds the samples) that segment attention,
    which keeps samples apart by its own index maps, never reads."""
    return torch.ones(input_ids.shape[0], 1, 1, 1, dtype=torch.bool, device=input_ids.device)


def build_causal_lm(
    pretrained: str | None,
    config: dict[str, Any] | None,
    dtype: str | None,
    attn_implementation: str,
    trust_remote_code: bool,
) -> PreTrainedModel:
    """Loads weights from ``pretrained`` or builds randomly initialised weights from ``config``."""
    torch_dtype = getattr(torch, dtype) if dtype else None
    if config is not None:
        config = dict(config)
        hf_config = AutoConfig.for_model(config.pop("model_type"), **config)
        return AutoModelForCausalLM.from_config(
            hf_config, dtype=torch_dtype, attn_implementation=attn_implementation,
            trust_remote_code=trust_remote_code,
        )
    try:
        return AutoModelForCausalLM.from_pretrained(
            pretrained, dtype=torch_dtype, attn_implementation=attn_implementation,
            trust_remote_code=trust_remote_code,
        )
    except OSError as err:
        raise FileNotFoundError(
            f"could not load the LLM from {pretrained!r}: not a local directory with config + weights, and the "
            "Hugging Face hub could not provide it (offline?). Download it once (`huggingface-cli download "
            f"{pretrained} --local-dir /models/...`) and set language_model.pretrained to that directory."
        ) from err
