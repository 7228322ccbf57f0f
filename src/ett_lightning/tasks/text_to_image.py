"""Text-to-image generation with the (ETT-tuned) tokenizer: the LLM predicts codebook indices from a caption."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.generation import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from ett_lightning.data.batching.batch import ETTBatch
from ett_lightning.data.batching.prompts import PromptBatch, left_pad
from ett_lightning.distributed.fsdp2 import is_sharded
from ett_lightning.losses import ETTLoss
from ett_lightning.models import LanguageModel, MLPProjector
from ett_lightning.module import COMPONENTS, DEFAULT_LEARNING_RATES, STAGE_TRAINABLE, ETTModule, Stage
from ett_lightning.tokenizer import VisionTokenizer
from ett_lightning.user_errors import UserError

ImageVocabulary = Literal["head", "extended"]
IMAGE_HEAD = "image_head"


MAX_IMAGE_CODES = 2**17  # the paper's IBQ codebook (131072); Open-MAGVIT2's 2**18 is refused


class TextToImage(ETTModule):
    """Next-token prediction of an image's codebook indices given its caption (the paper's generation task).

    Sequences are ``[bos] caption <image_begin> image tokens <image_end>`` (``sequence_layout = "text_first"``);
    the loss is cross-entropy over the image positions only. ``image_vocabulary`` chooses how the LLM reads and
    writes image tokens:

    - ``head``: inputs are the codebook embeddings through the projector (ETT's path, so a trainable tokenizer
      gets the generation loss's gradient), outputs come from a new linear ``image_head`` over the codebook;
    - ``extended``: the LLM's vocabulary grows by one row per code, used for both input and output. The rows are
      added after ``init_from`` loads, so ``init_from`` is an understanding checkpoint; resume an extended run
      with ``ckpt_path``.

    Classifier-free guidance: each training caption is dropped with probability ``caption_dropout`` (the row
    becomes ``[bos] <image_begin> ...``); sampling mixes conditional and unconditional logits as
    ``cond + (guidance_scale - 1) * (cond - uncond)`` and then applies ``temperature``, ``top_k`` and ``top_p``
    (0 and 1 switch them off; ``temperature`` 0 is greedy). ``sample_seed`` makes prediction reproducible.
    Default stage ``posttrain``: the tokenizer stays frozen, as in the paper's third stage.

    Args:
        tokenizer: the vision tokenizer whose codes are generated.
        projector: maps codebook embeddings to the LLM's hidden size.
        language_model: the Hugging Face causal LM.
        loss: loss weights (the caption weight scales the image-token cross-entropy).
        stage: which components train, as for :class:`ETTModule`.
        image_size: side of the generated images.
        image_vocabulary: ``head`` (projected codebook embeddings in, a linear head out) or ``extended`` (one new
            vocabulary row per code).
        caption_dropout: probability of dropping a training caption (for classifier-free guidance).
        guidance_scale: classifier-free guidance scale (1 switches guidance off).
        temperature: sampling temperature (0 is greedy).
        top_k: sample among the k most likely codes (0: all).
        top_p: nucleus sampling threshold (1: off).
        sample_seed: seed of prediction-time sampling.
        init_from: checkpoint whose component weights start this run.
        kwargs: the other :class:`ETTModule` options (learning rates, schedule, ``trainable``, ``torch_compile``).
    """

    component_names = (*COMPONENTS, IMAGE_HEAD)
    stage_trainable = {stage: names | {IMAGE_HEAD} for stage, names in STAGE_TRAINABLE.items()}
    default_learning_rates = {**DEFAULT_LEARNING_RATES, IMAGE_HEAD: 1e-4}
    sequence_layout = "text_first"

    def __init__(
        self,
        tokenizer: VisionTokenizer,
        projector: MLPProjector,
        language_model: LanguageModel,
        loss: ETTLoss | None = None,
        stage: Stage = "posttrain",
        image_size: int = 256,
        image_vocabulary: ImageVocabulary = "head",
        caption_dropout: float = 0.1,
        guidance_scale: float = 3.0,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        sample_seed: int = 0,
        init_from: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(tokenizer, projector, language_model, loss=loss, stage=stage, **kwargs)
        check_sampling(caption_dropout, guidance_scale, temperature, top_k, top_p)
        if image_vocabulary not in ("head", "extended"):
            raise ValueError(f"image_vocabulary must be 'head' or 'extended', got {image_vocabulary!r}")
        if image_vocabulary == "extended" and language_model.lora is not None:
            raise ValueError("image_vocabulary 'extended' trains new rows of the LLM's embedding and head, which a "
                             "LoRA LLM keeps frozen; use image_vocabulary 'head' with language_model.lora")
        if tokenizer.codebook_size > MAX_IMAGE_CODES:
            raise UserError(
                f"text-to-image predicts one of the tokenizer's {tokenizer.codebook_size} codes per image token: an "
                f"output layer of hidden size x {tokenizer.codebook_size} (0.94 B weights for a 3584-wide LLM and "
                f"2**18 codes) and a softmax that wide per token; up to {MAX_IMAGE_CODES} codes are supported "
                "(Open-MAGVIT2's own generator splits each 2**18 index into two 2**9 sub-tokens; this task does not)")
        self.image_size = image_size
        self.num_generated_tokens = tokenizer.num_tokens(image_size)
        self.image_vocabulary = image_vocabulary
        self.caption_dropout = caption_dropout
        self.sampling = dict(guidance_scale=guidance_scale, temperature=temperature, top_k=top_k, top_p=top_p)
        self.sample_seed = sample_seed
        self.image_head = None
        if image_vocabulary == "head":
            self.image_head = nn.Linear(language_model.hidden_size, tokenizer.codebook_size)
        if init_from is not None:
            self.load_components(init_from)
        if image_vocabulary == "extended":
            self.image_token_offset = grow_vocabulary(language_model, tokenizer.codebook_size)
        self.freeze_components()

    def setup(self, stage: str) -> None:
        """Generation makes images of ``image_size``; training images of another size would not match them."""
        datamodule = getattr(self.trainer, "datamodule", None)
        data_size = getattr(datamodule, "image_size", self.image_size)
        if data_size != self.image_size:
            raise ValueError(f"model.image_size={self.image_size} but data.image_size={data_size}: the model "
                             "generates the token grid it is trained on; set both to the same size")

    def compiled_parts(self) -> tuple[nn.Module, ...]:
        """The LLM body (this task never calls the vocabulary head) and the tokenizer's encoder and decoder."""
        return self.language_model.causal_lm.base_model, self.tokenizer.encoder, self.tokenizer.decoder

    def image_inputs(self, indices: Tensor, codes: Tensor | None = None) -> Tensor:
        """LLM input embeddings [B, N, C] of image tokens; ``codes`` (the encoder's straight-through codebook
        embeddings) carry the gradient back to a trainable tokenizer in ``head`` mode."""
        if self.image_vocabulary == "extended":
            return self.language_model.embed(indices + self.image_token_offset)
        return self.projector(codes if codes is not None else self.tokenizer.embed_indices(indices))

    def image_logits(self, hidden: Tensor) -> Tensor:
        """Hidden states [..., C] -> logits over the codebook [..., K]."""
        if self.image_vocabulary == "head":
            return self.image_head(hidden)
        output = self.language_model.model.get_output_embeddings()
        rows = slice(self.image_token_offset, self.image_token_offset + self.tokenizer.codebook_size)
        bias = output.bias[rows] if output.bias is not None else None
        return F.linear(hidden, output.weight[rows], bias)

    def hidden_states(self, inputs_embeds: Tensor, attention_mask: Tensor, **kwargs: Any):
        """The LLM body's output (no vocabulary-sized logits are computed)."""
        return self.language_model.causal_lm.base_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                                    **kwargs)

    def generation_loss(self, batch: ETTBatch, image_embeds: Tensor, indices: Tensor) -> Tensor:
        """Cross-entropy of each image token given the caption and the tokens before it; the position before a
        slot predicts it, so only the N image positions count."""
        lm = self.language_model
        embeds = lm.splice(lm.embed(batch.input_ids), image_embeds, batch.image_slots)
        hidden = self.hidden_states(embeds, batch.attention_mask).last_hidden_state
        predicting = hidden[:, :-1][batch.image_slots[:, 1:]]
        logits = self.image_logits(predicting)
        return F.cross_entropy(logits.float(), indices.flatten())

    def compute_losses(self, batch: ETTBatch):
        """Generation loss; plus alpha x VQ loss when the tokenizer trains (then the codes carry the gradient)."""
        encoded = self.encode_images(batch.images)
        if self.training:
            batch = self.drop_captions(batch)
        generation = self.generation_loss(batch, self.image_inputs(encoded.indices, encoded.embeddings),
                                          encoded.indices)
        if not self.is_trainable("tokenizer"):
            return generation, {"image_tokens": generation, "total": generation}, encoded
        reconstructions = self.tokenizer.decode(encoded.embeddings)
        total, parts = self.loss(generation, batch.images, reconstructions, encoded.quant_losses,
                                 self.loss.last_layer_of(self.tokenizer), self.global_step)
        parts["image_tokens"] = parts.pop("caption")
        return total, parts, encoded

    def drop_captions(self, batch: ETTBatch) -> ETTBatch:
        """Each row's caption removed with probability ``caption_dropout``: what guided sampling's unconditional
        branch sees."""
        dropped = (torch.rand(len(batch), device=batch.input_ids.device) < self.caption_dropout).nonzero()
        if len(dropped) == 0:
            return batch
        input_ids, attention_mask = batch.input_ids.clone(), batch.attention_mask.clone()
        slots = batch.image_slots.clone()
        keep = self.num_bos_tokens()
        for row in dropped.flatten().tolist():
            begin = int(batch.image_slots[row].nonzero()[0]) - 1
            length = int(batch.attention_mask[row].sum())
            for tensor, fill in ((input_ids, self.text_tokenizer.pad_token_id), (attention_mask, 0), (slots, False)):
                kept = torch.cat([tensor[row, :keep], tensor[row, begin:length]])
                tensor[row] = fill
                tensor[row, : len(kept)] = kept
        return replace(batch, input_ids=input_ids, attention_mask=attention_mask, image_slots=slots,
                       target_starts=slots.int().argmax(dim=1))

    def num_bos_tokens(self) -> int:
        return int(self.text_tokenizer.bos_token_id is not None)

    def prompts(self, batch: ETTBatch | PromptBatch) -> tuple[Tensor, Tensor, list[str]]:
        """Left-padded ``[bos] caption <image_begin>`` ids and mask, and the texts, from prompts or a data batch."""
        if isinstance(batch, PromptBatch):
            return batch.input_ids, batch.attention_mask, batch.prompts
        rows = [ids[: int(slots.nonzero()[0])].tolist() for ids, slots in zip(batch.input_ids, batch.image_slots)]
        input_ids, attention_mask = left_pad(rows, self.text_tokenizer.pad_token_id)
        captions = [answers[0] if answers else "" for answers in batch.answers]
        return input_ids.to(self.device), attention_mask.to(self.device), captions

    def unconditional_prompts(self, count: int, width: int) -> tuple[Tensor, Tensor]:
        """``[bos] <image_begin>`` rows, left padded to ``width``."""
        tokenizer = self.text_tokenizer
        row = [tokenizer.bos_token_id] * self.num_bos_tokens() + [self.language_model.image_begin_id]
        input_ids, attention_mask = left_pad([row] * count, tokenizer.pad_token_id)
        pad = width - input_ids.shape[1]
        return (F.pad(input_ids, (pad, 0), value=tokenizer.pad_token_id).to(self.device),
                F.pad(attention_mask, (pad, 0), value=0).to(self.device))

    @torch.no_grad()
    def generate_indices(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        guidance_scale: float | None = None,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Samples [B, N] codebook indices after left-padded prompts, one token at a time with the KV cache.

        ``guidance_scale`` None samples from the conditional logits alone; a number runs the unconditional
        prompts beside them (one batch of 2B) and guides.
        """
        guided = guidance_scale is not None
        if guided:
            uncond_ids, uncond_mask = self.unconditional_prompts(len(input_ids), input_ids.shape[1])
            input_ids, attention_mask = torch.cat([input_ids, uncond_ids]), torch.cat([attention_mask, uncond_mask])
        warpers = logits_warpers(temperature, top_k, top_p)
        positions = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
        output = self.hidden_states(self.language_model.embed(input_ids), attention_mask, position_ids=positions,
                                    use_cache=True)
        tokens = []
        for step in range(self.num_generated_tokens):
            logits = self.image_logits(output.last_hidden_state[:, -1]).float()
            if guided:
                cond, uncond = logits.chunk(2)
                logits = cond + (guidance_scale - 1.0) * (cond - uncond)
            tokens.append(sample_token(logits, warpers, temperature == 0.0, generator))
            if step + 1 == self.num_generated_tokens:
                break
            next_inputs = self.image_inputs(tokens[-1][:, None].repeat(2 if guided else 1, 1))
            attention_mask = F.pad(attention_mask, (0, 1), value=1)
            positions = positions[:, -1:] + 1
            output = self.hidden_states(next_inputs, attention_mask, position_ids=positions,
                                        past_key_values=output.past_key_values, use_cache=True)
        return torch.stack(tokens, dim=1)

    @torch.no_grad()
    def generate_images(self, batch: ETTBatch | PromptBatch, seed: int | None = None) -> tuple[Tensor, list[str]]:
        """Images in [-1, 1] for the batch's captions or prompts, with the module's sampling settings."""
        input_ids, attention_mask, texts = self.prompts(batch)
        generator = None
        if seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(seed)
        indices = self.generate_indices(input_ids, attention_mask, generator=generator, **self.sampling)
        return self.tokenizer.decode_indices(indices), texts

    def predict_step(self, batch: ETTBatch | PromptBatch, batch_idx: int) -> dict[str, Any]:
        """Generated images (float in [-1, 1], on the CPU) with their prompts and keys, seeded per batch."""
        if isinstance(batch, ETTBatch):
            padded, batch = batch, batch.without_padding()
            if not len(batch):
                if is_sharded(self):  # generation is a collective: sample for the padding, keep nothing
                    self.generate_images(padded, seed=self.sample_seed + batch_idx)
                size = self.image_size
                return {"images": torch.empty(0, 3, size, size), "prompts": [], "keys": []}
        images, texts = self.generate_images(batch, seed=self.sample_seed + batch_idx)
        return {"images": images.float().cpu(), "prompts": texts, "keys": list(batch.keys)}


def grow_vocabulary(language_model: LanguageModel, count: int) -> int:
    """Adds ``count`` embedding (and tied output) rows after the existing ones; returns the first new row."""
    offset = language_model.model.get_input_embeddings().num_embeddings
    language_model.model.resize_token_embeddings(offset + count, mean_resizing=False)
    return offset


def logits_warpers(temperature: float, top_k: int, top_p: float) -> LogitsProcessorList:
    """transformers' temperature / top-k / top-p warpers for the settings that are switched on."""
    warpers = LogitsProcessorList()
    if temperature not in (0.0, 1.0):
        warpers.append(TemperatureLogitsWarper(temperature))
    if top_k > 0:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    return warpers


def sample_token(logits: Tensor, warpers: LogitsProcessorList, greedy: bool,
                 generator: torch.Generator | None) -> Tensor:
    """One index per row from warped ``logits`` [B, K] (the argmax when ``greedy``)."""
    if greedy:
        return logits.argmax(dim=-1)
    probs = warpers(None, logits).softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def check_sampling(caption_dropout: float, guidance_scale: float, temperature: float, top_k: int,
                   top_p: float) -> None:
    if not 0.0 <= caption_dropout < 1.0:
        raise ValueError(f"caption_dropout must be in [0, 1), got {caption_dropout}")
    if guidance_scale < 0 or temperature < 0 or top_k < 0 or not 0.0 < top_p <= 1.0:
        raise ValueError(f"sampling needs guidance_scale >= 0, temperature >= 0, top_k >= 0 and 0 < top_p <= 1; "
                         f"got {guidance_scale}, {temperature}, {top_k}, {top_p}")
