"""The lmms-eval model ``ett``: ``lmms-eval --model ett --model_args pretrained=EXPORT_DIR --tasks ...``.

Registered through the ``lmms_eval.models`` entry point (:func:`manifest`), so lmms-eval needs no edits; installed
with ``pip install ett-lightning[eval]``. The chat class answers lmms-eval's chat requests (messages);
``--force_simple`` picks the simple class, which also scores log-likelihood tasks. Both answer through
:class:`InferenceModel`, the code ``ett ask`` and ``VQAEvaluation`` answer through.

Under ``accelerate launch`` or ``torchrun`` each process loads the model on its own device and lmms-eval hands it
its share of the documents (``rank`` / ``world_size``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from accelerate import Accelerator
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from lmms_eval.models.registry_v2 import ModelManifest
from lmms_eval.protocol import ChatMessages
from PIL import Image
from tqdm import tqdm

from ett_lightning.evaluation.inference import InferenceModel
from ett_lightning.models.generation import Decoding

log = logging.getLogger(__name__)
Question = tuple[Image.Image, str]
DEFAULT_MAX_NEW_TOKENS = 256
"""Answer length when a task sets no ``max_new_tokens``: room for the short answers of VQA tasks and for the
sentences of captioning and open-ended ones (generation stops at the end of the answer)."""


def manifest() -> ModelManifest:
    """The entry point's payload: model id ``ett``, with a chat and a simple implementation."""
    return ModelManifest(model_id="ett", chat_class_path=f"{__name__}.ETTChat", simple_class_path=f"{__name__}.ETT")


def decoding_of(gen_kwargs: dict[str, Any]) -> Decoding:
    """lmms-eval's generation arguments (``until``, ``max_new_tokens``, ``temperature``, ``top_p``) as a
    :class:`Decoding`; ``do_sample: false`` means greedy whatever the temperature."""
    until = gen_kwargs.get("until") or ()
    stop = (until,) if isinstance(until, str) else tuple(until)
    temperature = float(gen_kwargs.get("temperature") or 0.0)
    if gen_kwargs.get("do_sample") is False:
        temperature = 0.0
    return Decoding(max_new_tokens=int(gen_kwargs.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS),
                    temperature=temperature, top_p=float(gen_kwargs.get("top_p") or 1.0), stop=stop)


class ETT(lmms):
    """lmms-eval's simple interface: ``generate_until`` and ``loglikelihood`` on (context, visuals) requests.

    Args:
        pretrained: an ``ett export`` directory.
        device: where the model runs (default: this process's accelerator device).
        batch_size: questions answered together (left padded; answers do not depend on it).
        dtype: cast the weights, e.g. ``bfloat16`` (default: as saved).
        prompt: ``vqa`` (the run's vqa template around the question) or ``chat`` (the LLM's chat template).
        image_size: override the image size the export records.
        trust_remote_code: let the export's LLM run code it ships (``auto_map``); off unless given here.
        max_text_tokens: text tokens a question with its template may take (default: the LLM's context beside the
            image tokens); a longer one is answered with "" and a logged reason.
    """

    is_simple = True

    def __init__(self, pretrained: str, device: str | None = None, batch_size: int | str = 1, dtype: str | None = None,
                 prompt: str = "vqa", image_size: int | str | None = None, trust_remote_code: bool | str = False,
                 max_text_tokens: int | str | None = None, **unused: Any) -> None:
        super().__init__()
        self.accelerator = Accelerator()
        self._rank, self._world_size = self.accelerator.process_index, self.accelerator.num_processes
        self.model = InferenceModel.from_export(pretrained, device or self.accelerator.device, dtype, prompt,
                                                int(image_size) if image_size else None,
                                                str(trust_remote_code).lower() in ("true", "1", "yes"),
                                                int(max_text_tokens) if max_text_tokens else None)
        self.batch_size = int(batch_size)
        if unused:
            log.warning("the ett model ignores these model_args: %s", ", ".join(sorted(unused)))

    def document(self, task: str, split: str, doc_id: int) -> dict[str, Any]:
        return self.task_dict[task][split][doc_id]

    def first_image(self, visuals: list | None) -> Image.Image:
        """The request's first image; a question without one is asked about a mid-grey image (the model always
        reads one image)."""
        for visual in visuals or []:
            if isinstance(visual, Image.Image):
                return visual.convert("RGB")
        size = self.model.inputs.image_size
        return Image.new("RGB", (size, size), (128, 128, 128))

    def question(self, request: Instance) -> tuple[Question, Decoding]:
        context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
        return (self.first_image(doc_to_visual(self.document(task, split, doc_id))), context), decoding_of(gen_kwargs)

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Answers in request order; a question the model cannot be asked (a prompt longer than its budget) gets an
        empty answer and a logged reason instead of stopping the whole evaluation."""
        questions = [self.question(r) for r in requests]
        unfit = [self.unfit(r, text) for r, ((_, text), _) in zip(requests, questions)]
        answers: list[str] = []
        asked = [question for question, reason in zip(questions, unfit) if reason is None]
        progress = tqdm(total=len(asked), disable=self.rank != 0, desc="ett answering")
        for chunk, decoding in batches(asked, self.batch_size):
            answers += self.model.answer([image for image, _ in chunk], [text for _, text in chunk], decoding)
            progress.update(len(chunk))
        progress.close()
        in_order = iter(answers)
        return [next(in_order) if reason is None else "" for reason in unfit]

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """Scores in request order; a request that cannot be scored scores ``-inf`` (never chosen), with a reason
        logged."""
        results = []
        for request in tqdm(requests, disable=self.rank != 0, desc="ett scoring"):
            context, doc_to_target, doc_to_visual, doc_id, task, split = request.args
            doc = self.document(task, split, doc_id)
            continuation = doc_to_target if isinstance(doc_to_target, str) else doc_to_target(doc)
            if self.unfit(request, context, continuation) is not None:
                results.append((float("-inf"), False))
                continue
            results += self.model.log_likelihood([self.first_image(doc_to_visual(doc))], [context], [continuation])
        return results

    def unfit(self, request: Instance, question: str, target: str = "") -> str | None:
        """Why ``question`` cannot be asked (logged with the request's task and document), or None."""
        reason = self.model.unfit(question, target)
        if reason is not None:
            log.warning("ett: %s document %s not asked: %s", request.task_name, request.doc_id, reason)
        return reason

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError("the ett model answers single-round tasks")


class ETTChat(ETT):
    """lmms-eval's chat interface: each request's messages give the image (the first one) and the question (the
    text of the user turns). Arguments as :class:`ETT`."""

    is_simple = False

    def question(self, request: Instance) -> tuple[Question, Decoding]:
        _, doc_to_messages, gen_kwargs, doc_id, task, split = request.args
        messages = ChatMessages(messages=doc_to_messages(self.document(task, split, doc_id)))
        images, _, _ = messages.extract_media()
        text = "\n".join(content.text for message in messages.messages if message.role == "user"
                         for content in message.content if content.type == "text")
        return (self.first_image(images), text), decoding_of(gen_kwargs)


def batches(items: list[tuple[Question, Decoding]], size: int) -> Iterator[tuple[list[Question], Decoding]]:
    """Consecutive runs of at most ``size`` questions that share their decoding, in order."""
    chunk: list[Question] = []
    current: Decoding | None = None
    for question, decoding in items:
        if chunk and (decoding != current or len(chunk) == size):
            yield chunk, current
            chunk = []
        chunk.append(question)
        current = decoding
    if chunk:
        yield chunk, current

