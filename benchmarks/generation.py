"""Answers per second of ``InferenceModel`` (what ``ett ask`` and the lmms-eval model run), batch 1 against batch N.

    python benchmarks/generation.py --export outputs/demo/export            # a trained export
    python benchmarks/generation.py --config recipes/demo/ett_sft.yaml      # the recipe's model, random weights

Prints answers per second at each batch size and their ratio. Answers end at EOS or ``--max-new-tokens``; a batch
runs until its longest answer ends, as in use.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch
from PIL import Image

from ett_lightning.checkpoints.export import export_module
from ett_lightning.evaluation import InferenceModel
from ett_lightning.models.generation import Decoding


def load(options: argparse.Namespace) -> InferenceModel:
    if options.export:
        return InferenceModel.from_export(options.export, options.device)
    from throughput import build

    module = build(options.config, [])
    with tempfile.TemporaryDirectory() as directory:
        return InferenceModel.from_export(str(export_module(module, directory)), options.device)


def answers_per_second(model: InferenceModel, images, questions, batch_size: int, decoding: Decoding) -> float:
    model.answer(images[:batch_size], questions[:batch_size], decoding)  # warm-up
    start = time.perf_counter()
    for first in range(0, len(questions), batch_size):
        model.answer(images[first:first + batch_size], questions[first:first + batch_size], decoding)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    return len(questions) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", help="an `ett export` directory")
    parser.add_argument("--config", default="recipes/demo/ett_sft.yaml", help="recipe whose model to build instead")
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    options = parser.parse_args()
    torch.manual_seed(0)
    model = load(options)
    rng = np.random.default_rng(0)
    size = model.inputs.image_size
    images = [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(options.questions)]
    questions = [f"What colour is the text in picture {i}?" for i in range(options.questions)]
    decoding = Decoding(max_new_tokens=options.max_new_tokens)
    single = answers_per_second(model, images, questions, 1, decoding)
    batched = answers_per_second(model, images, questions, options.batch_size, decoding)
    print(f"device {model.device}, {options.questions} questions, {options.max_new_tokens} new tokens each")
    print(f"batch 1: {single:.1f} answers/s")
    print(f"batch {options.batch_size}: {batched:.1f} answers/s")
    print(f"ratio batch {options.batch_size} / batch 1: {batched / single:.2f}")


if __name__ == "__main__":
    main()
