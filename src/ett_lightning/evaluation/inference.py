"""A tuned model loaded for answering questions about images, and nothing that only training needs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from PIL import Image
from torch import nn
from transformers import PreTrainedTokenizerBase

from ett_lightning.checkpoints.export import load_export
from ett_lightning.data.batching.batch import ETTBatch
from ett_lightning.data.batching.collate import Collator
from ett_lightning.data.input_spec import InputSpec
from ett_lightning.data.sequences.sequence_builder import SequenceBuilder
from ett_lightning.data.sequences.token_sequence import IGNORE_INDEX, TokenSequence
from ett_lightning.data.skips import SkipCounter, SkipSample
from ett_lightning.data.streaming.transforms import ImageTransform
from ett_lightning.models import LanguageModel
from ett_lightning.models.generation import GREEDY, Decoding, generate_text
from ett_lightning.tokenizer import VisionTokenizer

PROMPT_STYLES = ("vqa", "chat")


class InferenceModel(nn.Module):
    """Tokenizer, projector and LLM of an export, in eval mode, with the image and prompt preparation the export
    records (:class:`InputSpec`): no loss, no LPIPS or discriminator, nothing downloaded.

    Questions are laid out as in training: ``prompt="vqa"`` through the ``vqa`` template (``Question: {question}
    Answer:`` unless the run set its own), ``prompt="chat"`` as one user turn ``<image>\\n{question}`` through the
    LLM's chat template with the generation prompt. Answers come from
    :func:`~ett_lightning.models.generation.generate_text`, the function ``VQAEvaluation`` answers through, and
    batches are collated by the training data's collator, so an answer does not depend on the path that asked.

    Args:
        tokenizer: the vision tokenizer.
        projector: the code-to-LLM projector.
        language_model: the LLM with its text tokenizer.
        inputs: how images and prompts are prepared.
        prompt: ``"vqa"`` or ``"chat"`` (see above).
        max_text_tokens: text tokens a question with its template and answer may take. Default: what the LLM's
            context holds beside the image tokens, not training's ``max_text_tokens`` (which bounded the training
            data). A question is never cut: one that does not fit is refused (:meth:`unfit` says why).
    """

    def __init__(self, tokenizer: VisionTokenizer, projector: nn.Module, language_model: LanguageModel,
                 inputs: InputSpec, prompt: str = "vqa", max_text_tokens: int | None = None) -> None:
        super().__init__()
        if prompt not in PROMPT_STYLES:
            raise ValueError(f"prompt must be one of {PROMPT_STYLES}, got {prompt!r}")
        if inputs.layout != "image_first":
            raise ValueError(f"this export reads {inputs.layout} sequences (image generation); only image_first models "
                             "answer questions")
        self.tokenizer, self.projector, self.language_model = tokenizer, projector, language_model
        self.inputs, self.prompt = inputs, prompt
        num_image_tokens = tokenizer.num_tokens(inputs.image_size)
        context = getattr(language_model.causal_lm.config, "max_position_embeddings", None)
        self.max_text_tokens = max_text_tokens or (context - num_image_tokens - 3 if context else
                                                   inputs.max_text_tokens)  # 3: bos and the image markers
        self.builder = SequenceBuilder(language_model.tokenizer, num_image_tokens, inputs.all_templates,
                                       self.max_text_tokens)
        self.transform = ImageTransform(inputs.image_size)
        self.collate = Collator(language_model.tokenizer.pad_token_id, SkipCounter(), num_image_tokens)
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_export(cls, directory: str, device: str | torch.device = "cpu", dtype: str | None = None,
                    prompt: str = "vqa", image_size: int | None = None,
                    trust_remote_code: bool = False, max_text_tokens: int | None = None) -> InferenceModel:
        """The model of an ``ett export`` directory on ``device`` (weights cast to ``dtype``, e.g. ``"bfloat16"``,
        when given). ``image_size`` overrides the recorded one (for exports that predate recording it). Code the
        export's LLM ships runs only with ``trust_remote_code`` (see :func:`load_export`)."""
        parts = load_export(directory, trust_remote_code)
        inputs = parts["inputs"]
        if image_size is not None:
            inputs = InputSpec(image_size, inputs.templates, inputs.max_text_tokens, inputs.layout)
        model = cls(parts["tokenizer"], parts["projector"], parts["language_model"], inputs, prompt, max_text_tokens)
        return model.to(device=device, dtype=getattr(torch, dtype) if dtype else None)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def sample(self, image: Image.Image, question: str, target: str = "") -> dict:
        """One decoded sample, as the training data's decoder makes it: the prepared image and the token sequence of
        the question with ``target`` as its answer (what generation is fed stops before the answer)."""
        return {"image": self.transform(image), "sequence": self.sample_sequence(question, target),
                "answers": [target], "task": "vqa", "key": question}

    def sample_sequence(self, question: str, target: str) -> TokenSequence:
        if self.prompt == "chat":
            messages = [{"role": "user", "content": f"<image>\n{question.strip()}"},
                        {"role": "assistant", "content": target.strip() or "?"}]
            return self.builder.build("conversation", {"messages": messages}, target)
        return self.builder.build("vqa", {"question": question.strip()}, target or "?")

    def unfit(self, question: str, target: str = "") -> str | None:
        """Why ``question`` (with ``target`` as its answer) cannot be asked, e.g. a prompt longer than
        ``max_text_tokens``; None when it can. :meth:`answer` and :meth:`log_likelihood` raise
        :class:`~ett_lightning.data.skips.SkipSample` on such a question; batch callers ask first."""
        try:
            self.sample_sequence(question, target)
        except SkipSample as reason:
            return str(reason)
        return None

    def batch(self, images: Sequence[Image.Image], questions: Sequence[str],
              targets: Sequence[str] | None = None) -> ETTBatch:
        """The collated batch of these questions on the model's device, images in the tokenizer's range."""
        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images for {len(questions)} questions")
        targets = targets or [""] * len(questions)
        batch = self.collate([self.sample(i, q, t) for i, q, t in zip(images, questions, targets)])
        return move_data_to_device(batch, self.device).normalized()

    def image_embeddings(self, batch: ETTBatch) -> torch.Tensor:
        """The batch's images as projected codebook embeddings, the LLM's image tokens."""
        return self.projector(self.tokenizer.encode(batch.images.to(self.dtype)).embeddings)

    @torch.no_grad()
    def generate(self, batch: ETTBatch, decoding: Decoding = GREEDY) -> list[str]:
        return generate_text(self.language_model, self.image_embeddings(batch), batch.input_ids, batch.image_slots,
                             batch.target_starts, decoding)

    def answer(self, images: Sequence[Image.Image], questions: Sequence[str],
               decoding: Decoding = GREEDY) -> list[str]:
        """One answer per (image, question), decoded as ``decoding`` says, all in one left-padded batch."""
        if not questions:
            return []
        return self.generate(self.batch(images, questions), decoding)

    @torch.no_grad()
    def log_likelihood(self, images: Sequence[Image.Image], questions: Sequence[str],
                       continuations: Sequence[str]) -> list[tuple[float, bool]]:
        """For each question, the summed log-probability of ``continuation`` as the answer and whether greedy decoding
        would produce exactly its tokens. Scored are the answer's own tokens: the labelled tokens before the first
        special token, so neither the EOS of the vqa layout nor a chat template's end of turn (``<|im_end|>``, which
        need not be the tokenizer's EOS) and what the template puts after it."""
        batch = self.batch(images, questions, continuations)
        logits = self.language_model(batch.input_ids, batch.attention_mask, self.image_embeddings(batch),
                                     batch.image_slots).logits
        log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        targets = batch.labels[:, 1:]
        special = torch.tensor(sorted(special_ids(self.language_model.tokenizer)), device=targets.device)
        results = []
        for row in range(len(batch)):
            positions = (targets[row] != IGNORE_INDEX).nonzero().flatten()
            ends = torch.isin(targets[row, positions], special).nonzero().flatten()
            positions = positions[:int(ends[0])] if len(ends) else positions
            tokens = targets[row, positions]
            row_log_probs = log_probs[row, positions]
            total = float(row_log_probs.gather(-1, tokens[:, None]).sum())
            results.append((total, bool((row_log_probs.argmax(-1) == tokens).all())))
        return results

    @property
    def dtype(self) -> torch.dtype:
        return next(self.projector.parameters()).dtype


def special_ids(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """The ids of the tokenizer's special tokens, those its backend marks special included (a base model's ChatML
    ``<|im_end|>`` is one without being its EOS or a listed additional special token)."""
    marked = {index for index, token in tokenizer.added_tokens_decoder.items() if token.special}
    return set(tokenizer.all_special_ids) | marked
