"""One trained model, four ways to ask it: ``VQAEvaluation`` during validation, ``lightning predict``, ``ett ask`` and
lmms-eval through the ``ett`` model. They must give the same answers, and lmms-eval's score must equal
``VQAAccuracy`` on lmms-eval's own logged predictions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import webdataset as wds

from ett_lightning.checkpoints.export import EXPORT_FILE
from ett_lightning.commands.ett import main as ett_main
from ett_lightning.data.streaming.shards import OrderedShardStream, expand_shards
from ett_lightning.data.streaming.tar_stream import tar_to_samples
from ett_lightning.metrics import VQAAccuracy

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--data.init_args.image_size=32", "--model.init_args.tokenizer.init_args.image_size=32",
         "--data.init_args.batch_size=8", "--data.init_args.num_workers=0"]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synthetic_shards) -> dict[str, Path]:
    """The demo ETT recipe as shipped, shrunk: 300 steps on the VQA shards, validated (with VQAEvaluation) at the
    end, exported, predicted over the val shards, and the val questions written as image files + JSON lines.
    It trains on the val questions too, so that it answers some right and the scores compared are not all 0."""
    work = tmp_path_factory.mktemp("scoring")
    run = work / "run"
    vqa = synthetic_shards / "vqa"
    ett_main(["fit", "--config", str(ROOT / "recipes/demo/ett_sft.yaml"), *SMALL,
              f"--data.train_shards=[{vqa}/train-*.tar,{vqa}/val-*.tar]", f"--data.val_shards={vqa}/val-*.tar",
              f"--trainer.default_root_dir={run}", "--trainer.max_steps=300", "--trainer.val_check_interval=300",
              "--trainer.limit_val_batches=null",
              "--model.init_args.warmup_steps=5",
              "--trainer.callbacks+=ett_lightning.callbacks.VQAEvaluation"])
    ett_main(["export", "--ckpt", str(run / "checkpoints/last.ckpt"), "--out", str(work / "export")])
    ett_main(["predict", "--config", str(run / "config.yaml"), "--ckpt_path", str(run / "checkpoints/last.ckpt"),
              f"--trainer.default_root_dir={work / 'predict'}"])
    images = work / "images"
    images.mkdir()
    with (work / "questions.jsonl").open("w") as out:
        for sample in wds.DataPipeline(OrderedShardStream(expand_shards(f"{vqa}/val-*.tar")),
                                       tar_to_samples(handler=None)):
            meta = json.loads(sample["json"])
            (images / f"{sample['__key__']}.png").write_bytes(sample["png"])
            out.write(json.dumps({"image": f"images/{sample['__key__']}.png", "question": meta["question"],
                                  "question_id": meta["question_id"], "answers": meta["answers"]}) + "\n")
    return {"work": work, "run": run, "export": work / "export", "questions": work / "questions.jsonl",
            "shards": vqa}


def ask(trained: dict[str, Path], batch_size: int) -> list[dict]:
    output = trained["work"] / f"answers_{batch_size}.jsonl"
    ett_main(["ask", "--export", str(trained["export"]), "--questions", str(trained["questions"]),
              "--output", str(output), "--batch-size", str(batch_size)])
    return [json.loads(line) for line in output.read_text().splitlines()]


def test_export_records_the_runs_inputs(trained):
    inputs = json.loads((trained["export"] / EXPORT_FILE).read_text())["inputs"]
    assert inputs["image"]["size"] == 32
    assert inputs["prompt"]["templates"]["vqa"] == "Question: {question} Answer:"
    assert inputs["prompt"]["max_text_tokens"] == 96 and inputs["prompt"]["layout"] == "image_first"


def test_ett_ask_vqa_evaluation_and_predict_give_the_same_answers(trained):
    single, batched = ask(trained, 1), ask(trained, 8)
    assert len(single) == 16 and batched == single
    assert len({row["answer"] for row in single}) > 1, "a model answering everything alike tests nothing"
    validation = {row["question_id"]: row["answer"] for row in json.loads(
        (trained["run"] / "vqa_results.json").read_text())}
    assert validation == {row["question_id"]: row["answer"] for row in single}
    predicted = [json.loads(line) for line in (trained["work"] / "predict/predictions.jsonl").read_text().splitlines()]
    assert sorted(row["prediction"] for row in predicted) == sorted(validation.values())


def test_lmms_eval_scores_the_export_like_vqa_accuracy(trained):
    pytest.importorskip("lmms_eval")
    task = trained["work"] / "task"
    ett_main(["lmms-task", "--shards", f"{trained['shards']}/val-*.tar", "--out", str(task)])
    out = trained["work"] / "lmms"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(trained["work"] / "hf")}
    completed = subprocess.run(
        [sys.executable, "-m", "lmms_eval", "--model", "ett", "--model_args", f"pretrained={trained['export']}",
         "--tasks", "ett_vqa", "--include_path", str(task), "--batch_size", "4", "--log_samples",
         "--output_path", str(out)],
        env=env, capture_output=True, text=True, timeout=300)
    results = sorted(out.rglob("*_results.json"))  # lmms-eval exits 0 after an evaluation error: read its results
    assert results, completed.stdout[-3000:] + completed.stderr[-3000:]
    score = json.loads(results[0].read_text())["results"]["ett_vqa"]["exact_match,none"]
    samples = [json.loads(line) for path in out.rglob("*ett_vqa*.jsonl") for line in path.read_text().splitlines()]
    questions = [json.loads(line) for line in trained["questions"].read_text().splitlines()]  # the shards' order
    assert sorted(s["doc_id"] for s in samples) == list(range(16))
    predictions = {s["doc_id"]: s["filtered_resps"] for s in samples}
    predictions = {i: p[0] if isinstance(p, list) else p for i, p in predictions.items()}
    metric = VQAAccuracy()
    metric.update(list(predictions.values()), [questions[i]["answers"] for i in predictions])
    assert 0 < score == pytest.approx(metric.compute().item(), abs=1e-6)
    assert [predictions[i] for i in range(16)] == [row["answer"] for row in ask(trained, 8)]
