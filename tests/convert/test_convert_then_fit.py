"""A user's first stage-3 run on their own instruction data: ``ett-convert llava`` on a LLaVA-style JSON with bad
entries, then ``lightning fit --config recipes/demo/ett_posttrain.yaml`` on the shards it wrote, with a Hugging
Face model directory (BPE tokenizer with a chat template, tiny Qwen2) loaded through ``LanguageModel(pretrained)``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ett_lightning.cli import main as cli_main
from ett_lightning.convert.cli import main as ett_convert
from tests.chat_model import make_chat_model_dir
from tests.cli_runs import ROOT

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}


def llava_json(tmp_path: Path, count: int, seed: int) -> tuple[Path, Path]:
    """``count`` two-turn conversations about flat colour images, plus four bad entries."""
    rng, root = random.Random(seed), tmp_path / "images"
    root.mkdir(exist_ok=True)
    entries = []
    for index in range(count):
        name, colour = rng.choice(sorted(COLOURS.items()))
        Image.fromarray(np.full((64, 64, 3), colour, dtype=np.uint8)).save(root / f"{seed}-{index}.png")
        entries.append({"id": f"{seed}-{index}", "image": f"{seed}-{index}.png", "conversations": [
            {"from": "human", "value": "<image>\nDescribe the picture."}, {"from": "gpt", "value": f"A {name} square."},
            {"from": "human", "value": "What colour is the text?"}, {"from": "gpt", "value": name}]})
    entries += [{"id": "no image", "conversations": entries[0]["conversations"]},
                {"id": "missing", "image": "gone.png", "conversations": entries[0]["conversations"]},
                {"id": "no answer", "image": f"{seed}-0.png", "conversations": entries[0]["conversations"][:1]},
                []]
    source = tmp_path / f"llava-{seed}.json"
    source.write_text(json.dumps(entries))
    return source, root


@pytest.mark.slow
def test_convert_llava_then_fit_the_posttrain_recipe_with_a_chat_model(tmp_path, monkeypatch):
    shards = tmp_path / "shards"
    for split, count, seed in (("train", 24, 0), ("val", 6, 1)):
        source, images = llava_json(tmp_path, count, seed)
        ett_convert(["llava", "--json", str(source), "--image-root", str(images), "--output", str(shards),
                     "--split", split, "--samples-per-shard", "10"])
        summary = json.loads((shards / f"{split}-summary.json").read_text())
        assert summary["written"] == count and summary["skipped"] == 4
    model_dir = make_chat_model_dir(tmp_path / "chat_llm")
    run = tmp_path / "run"
    language_model = {"class_path": "ett_lightning.LanguageModel",
                      "init_args": {"pretrained": str(model_dir), "config": None}}
    monkeypatch.chdir(tmp_path)  # the CLI's own entry function, in this process (no second start-up)
    cli_main(["fit", "--config", str(ROOT / "recipes/demo/ett_posttrain.yaml"),
              f"--data.train_shards={shards}/train-*.tar", f"--data.val_shards={shards}/val-*.tar",
              "--data.init_args.batch_size=4",
              f"--model.init_args.language_model={json.dumps(language_model)}",
              "--trainer.max_steps=4", "--trainer.val_check_interval=2", "--trainer.limit_val_batches=2",
              f"--trainer.default_root_dir={run}"])

    metrics = json.loads(next(run.rglob("metrics.json")).read_text())
    assert "val/vqa_acc" in json.dumps(metrics)
    assert [p.relative_to(run) for p in run.rglob("last.ckpt")] == [Path("checkpoints/last.ckpt")]
    results = json.loads(next(run.rglob("vqa_results.json")).read_text())
    assert sorted(r["question_id"] for r in results) == [f"1-{i}" for i in range(6)]
