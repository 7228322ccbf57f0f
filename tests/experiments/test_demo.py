"""`ett demo` end to end at a few steps per stage: every run happens, results.json/md/png are written, and the
checkpoints it leaves reload exactly and serve `lightning validate`, `predict` and the text-to-image recipe."""

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
import yaml

from ett_lightning import ETTModule
from ett_lightning.convert.synthetic import make_shards
from ett_lightning.experiments import demo as demo_module
from ett_lightning.experiments.demo import CoreShare, DemoPlan, main, run_arm
from ett_lightning.experiments.report import answer_type_lines, blind_lines
from ett_lightning.experiments.runs import LightningRun, run_cli


def test_the_report_flags_arms_that_do_not_beat_their_grey_image_answers():
    blind = {"frozen": {"vqa_acc": 0.230, "vqa_acc_blind": 0.229}, "ett": {"vqa_acc": 0.235, "vqa_acc_blind": 0.23}}
    assert "not using the image" in "".join(blind_lines(blind))
    seeing = {**blind, "ett": {"vqa_acc": 0.40, "vqa_acc_blind": 0.23}}
    assert "frozen 22.9, ETT 23.0" in blind_lines(seeing)[0] and "not using" not in "".join(blind_lines(seeing))
    assert blind_lines({"frozen": {"vqa_acc": 0.2}, "ett": {"vqa_acc": 0.2}}) == []


def test_the_report_tables_each_answer_type_beside_its_grey_image_accuracy():
    arm = {"vqa_acc": 0.5, "vqa_acc_per_seed": [0.5], "vqa_acc_blind": 0.2, "vqa_acc_colour": 0.7,
           "vqa_acc_blind_colour": 0.15, "vqa_acc_word": 0.1}
    lines = answer_type_lines({"frozen": arm, "ett": {**arm, "vqa_acc_colour": 0.8}})
    assert lines[2:4] == ["| colour | 70.0 | 15.0 | 80.0 | 15.0 |", "| word | 10.0 | - | 10.0 | - |"]
    assert answer_type_lines({"frozen": {"vqa_acc": 0.5, "vqa_acc_per_seed": [0.5]}, "ett": {}}) == []


def test_each_run_gets_its_share_of_the_cores_and_a_chain_left_alone_gets_them_all(tmp_path, monkeypatch):
    monkeypatch.setattr(demo_module.os, "cpu_count", lambda: 4)
    cores = CoreShare(chains=3, at_once=2)
    started = []

    def run(self, reuse=False):
        started.append((self.out.name, self.threads))
        if self.out.parent.name == "ett" and self.out.name == "tune":
            cores.chain_done()  # the chain beside this one ends while this one tunes

    monkeypatch.setattr(LightningRun, "run", run)
    run_arm(DemoPlan(out=tmp_path), 0, "frozen", tmp_path / "align.ckpt", False, cores)
    assert started == [("tune", 2), ("posttrain", 2), ("vqa_eval", 2)]  # 3 chains to go, 2 at once: 2 cores each
    started.clear()
    run_arm(DemoPlan(out=tmp_path), 1, "ett", tmp_path / "align.ckpt", False, cores)
    assert started == [("tune", 2), ("posttrain", 4), ("vqa_eval", 4), ("tokenizer_eval", 4)]
    assert cores.left == 0
    started.clear()
    run_arm(DemoPlan(out=tmp_path), 0, "frozen", tmp_path / "align.ckpt", False, None)  # --one-arm-at-a-time
    assert started == [("tune", None), ("posttrain", None), ("vqa_eval", None)]


def test_a_failed_arm_stops_the_demo_without_running_the_remaining_seeds(tmp_path, monkeypatch):
    (tmp_path / "data" / "vqa").mkdir(parents=True)
    monkeypatch.setattr(LightningRun, "run", lambda self, reuse=False: self)
    started = []

    def arm_chain(plan, seed, arm, *args):
        started.append((seed, arm))
        if (seed, arm) == (0, "frozen"):
            raise RuntimeError("stage 2 failed")
        time.sleep(2.0)  # long enough that the failure is seen before a free worker could take a later seed

    monkeypatch.setattr(demo_module, "run_arm", arm_chain)
    with pytest.raises(RuntimeError, match="stage 2 failed"):
        demo_module.run_demo(DemoPlan(out=tmp_path / "out", data=tmp_path / "data", seeds=[0, 1, 2, 3]))
    assert len(started) <= 4  # of the 8 chains submitted: the failed one and those already running


ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, Path]:
    """(data, out) of a 2-steps-per-stage `ett demo` with seed 3, run from a folder outside the repository."""
    root = tmp_path_factory.mktemp("demo")
    data = make_shards(root / "data", num_train=32, num_val=32, image_size=64, samples_per_shard=16, seed=2)
    started_in = os.getcwd()
    handlers = [signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)]
    os.chdir(root)
    try:
        main(["--out", str(root / "out"), "--data", str(data), "--seeds", "3", "--tokenizer-steps", "2",
              "--align-steps", "2", "--tune-steps", "2", "--posttrain-steps", "2"])
    finally:
        os.chdir(started_in)
    assert [signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)] == handlers  # as it found them
    return data, root / "out"


def lightning(*args: str) -> None:
    """``lightning ARGS`` here, forked as `ett demo` runs its stages (the console script itself is run by
    tests/test_cli.py and the multi-process tests)."""
    log = Path("lightning.log")
    assert run_cli(list(args), log) == 0, log.read_text()[-3000:]


@pytest.mark.slow
def test_demo_chains_every_stage_and_writes_results(demo):
    _, out = demo
    results = json.loads((out / "results.json").read_text())
    for arm in ("frozen", "ett"):
        assert 0.0 <= results[arm]["vqa_acc"] <= 1.0 and len(results[arm]["vqa_acc_per_seed"]) == 1
        assert 0.0 <= results[arm]["vqa_acc_blind"] <= 1.0
        assert {"vqa_acc_word", "vqa_acc_colour", "vqa_acc_yes_no", "vqa_acc_blind_colour"} <= set(results[arm])
    low, high = results["ett_minus_frozen_interval_95"]
    assert -100 <= low <= high <= 100 and "95 % interval" in (out / "results.md").read_text()
    assert results["tokenizer"]["psnr_before"] > 0 and results["tokenizer"]["psnr_after"] > 0
    assert results["tokenizer"]["rfid_before"].startswith("unavailable")
    assert results["seeds"] == [3] and results["wall_seconds"] > 0
    assert results["machine"]["runs_at_once"] == 2  # both arms at once, half the cores each
    assert results["machine"]["torch_threads"] == max(1, (os.cpu_count() or 1) // 2)
    probe = results["probe"]
    assert 0.0 <= probe["frozen"] <= 1.0 and probe["ett_per_seed"] == [probe["ett"]]
    assert 0.0 <= probe["colour"]["ett"] <= 1.0
    assert "probe: character from the codes" in (out / "results.md").read_text()
    assert "ETT - frozen" in (out / "results.md").read_text() and "grey images" in (out / "results.md").read_text()
    assert (out / "results.png").stat().st_size > 10_000
    seconds = results["seconds_per_run"]  # where the time goes: every run's command, timed
    assert set(seconds) == {"shards (made or found)", "tokenizer", "align", "tokenizer_eval", "frozen tune",
                            "frozen posttrain", "frozen vqa_eval", "ett tune", "ett posttrain", "ett vqa_eval",
                            "ett tokenizer_eval"}
    assert seconds.pop("shards (made or found)") >= 0 and all(value > 0 for value in seconds.values())
    assert seconds["tokenizer"] + seconds["align"] + seconds["tokenizer_eval"] < results["wall_seconds"]
    half, every = max(1, (os.cpu_count() or 1) // 2), os.cpu_count() or 1
    threads = results["threads_per_run"]
    assert threads["frozen tune"] == threads["ett tune"] == [half] and threads["tokenizer"] == [None]  # default
    assert threads["ett tokenizer_eval"][0] in (half, every)  # every core once the frozen arm's chain has ended
    assert f"| ett tune | {seconds['ett tune']:.1f} | {half} |" in (out / "results.md").read_text()
    assert f"| tokenizer | {seconds['tokenizer']:.1f} | default |" in (out / "results.md").read_text()
    frozen = yaml.safe_load((out / "seed3/frozen/tune/config.yaml").read_text())
    ett = yaml.safe_load((out / "seed3/ett/tune/config.yaml").read_text())
    assert frozen["model"]["init_args"]["trainable"] == {"tokenizer": False}
    assert ett["model"]["init_args"]["trainable"] == {"tokenizer": True}
    assert frozen["model"]["init_args"]["init_from"] == ett["model"]["init_args"]["init_from"] == str(
        out / "align" / "checkpoints" / "last.ckpt")
    assert frozen["seed_everything"] == ett["seed_everything"] == 3


@pytest.mark.slow
def test_demo_checkpoints_reload_exactly_and_serve_validate_predict_and_text_to_image(demo, tmp_path, monkeypatch):
    data, out = demo
    tokenizer, align, tune = (out / run / "checkpoints/last.ckpt" for run in ("tokenizer", "align", "seed3/ett/tune"))
    module = ETTModule.load_from_checkpoint(tune)
    pretrained, aligned, saved = (torch.load(c, map_location="cpu", weights_only=False)["state_dict"]
                                  for c in (tokenizer, align, tune))
    assert module.stage == "ett" and all(torch.equal(saved[k], v) for k, v in module.state_dict().items())
    codebook, patch_embed = "tokenizer.quantize.embedding.weight", "tokenizer.encoder.vit.patch_embed.proj.weight"
    assert torch.equal(pretrained[codebook], aligned[codebook])
    assert not torch.equal(aligned[patch_embed], saved[patch_embed])

    shutil.copytree(data, tmp_path / "data" / "synthetic")
    monkeypatch.chdir(tmp_path)  # no recipes/ here: the packaged recipes, by name
    one_process = "--data.init_args.num_workers=0"
    lightning("validate", "--config", "demo/ett_posttrain", "--trainer.limit_val_batches=1",
              f"--ckpt_path={tune}", one_process)
    lightning("predict", "--config", "demo/ett_posttrain", "--trainer.limit_predict_batches=1",
              f"--ckpt_path={tune}", one_process, "--data.init_args.batch_size=2")
    lightning("fit", "--config", "demo/t2i", "--trainer.max_steps=2", "--trainer.limit_val_batches=1",
              "--trainer.val_check_interval=2", "--data.init_args.batch_size=4", one_process,
              f"--model.init_args.init_from={tune}")
    lightning("predict", "--config", "demo/t2i", one_process,
              "--ckpt_path=outputs/demo/t2i/checkpoints/last.ckpt")
    written = sorted((tmp_path / "outputs/demo/t2i/predictions").glob("*.png"))
    prompts = yaml.safe_load((ROOT / "recipes/demo/t2i.yaml").read_text())["data"]["init_args"]["predict_prompts"]
    assert len([p for p in written if not p.name.startswith("grid_")]) == len(prompts)


@pytest.mark.slow
def test_a_demo_runs_saved_config_reruns_elsewhere_and_never_over_the_run(demo, tmp_path, monkeypatch):
    """`lightning fit --config <run>/config.yaml --trainer.default_root_dir=X`, as the README invites for any demo
    step, writes everything to X and leaves the run byte-identical; the same config fitted fresh into its own
    directory stops with one line."""
    _, out = demo
    run = out / "seed3/ett/tune"
    before = {path: path.read_bytes() for path in sorted(run.rglob("*")) if path.is_file()}
    monkeypatch.chdir(tmp_path)
    lightning("fit", "--config", str(run / "config.yaml"), f"--trainer.default_root_dir={tmp_path / 'again'}",
              "--data.init_args.num_workers=0")
    assert {path: path.read_bytes() for path in sorted(run.rglob("*")) if path.is_file()} == before
    again = tmp_path / "again"
    assert {"config.yaml", "hparams.yaml", "checkpoints"} <= {path.name for path in again.iterdir()}
    assert list(again.glob("events.out.tfevents.*"))
    assert (again / "checkpoints/last.ckpt").is_file()
    assert yaml.safe_load((again / "config.yaml").read_text())["trainer"]["default_root_dir"] == str(again)

    log = tmp_path / "refused.log"
    assert run_cli(["fit", "--config", str(run / "config.yaml"), "--data.init_args.num_workers=0"], log) == 2
    assert log.read_text().strip().splitlines()[-1].startswith(f"ett fit: error: {run} already holds a run")
    assert "Traceback" not in log.read_text()
    assert {path: path.read_bytes() for path in sorted(run.rglob("*")) if path.is_file()} == before


def test_a_quantizer_family_reaches_every_stage_of_the_chain(tmp_path, monkeypatch):
    plan = DemoPlan(out=tmp_path, quantizer="fsq")
    assert Path(plan.run("tokenizer", "tokenizer").recipe).name == "tokenizer_fsq.yaml"
    for stage in ("ett_align", "ett_sft", "ett_posttrain"):
        model = plan.run(stage, stage).config()["model"]["init_args"]
        assert model["tokenizer"]["init_args"]["quantizer"] == {"class_path": "ett_lightning.FiniteScalarQuantizer",
                                                                "init_args": {"levels": [4, 4, 4, 4]}}
        assert model["projector"]["init_args"]["in_dim"] == 4  # the FSQ code vector's 4 values
    vq = DemoPlan(out=tmp_path).run("ett_sft", "tune").config()["model"]["init_args"]
    assert vq["tokenizer"]["init_args"]["quantizer"]["class_path"] == "ett_lightning.VectorQuantizer"
    planned = []
    monkeypatch.setattr(demo_module, "run_demo", lambda plan, reuse: planned.append(plan) or {"wall_seconds": 0})
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError):  # results.md of the stubbed run
        main(["--quantizer", "lfq", "--data", str(tmp_path)])
    assert planned[0].quantizer == "lfq" and planned[0].out == Path("outputs/demo-lfq")


def test_a_family_recipe_whose_quantizer_cannot_be_built_stops_the_demo_before_it_trains(tmp_path, capsys):
    recipes = tmp_path / "recipes"
    shutil.copytree(ROOT / "recipes" / "demo", recipes)
    lfq = recipes / "tokenizer_lfq.yaml"
    lfq.write_text(lfq.read_text().replace("bits: 8 ", "bits: 40 "))
    with pytest.raises(SystemExit) as stopped:
        main(["--quantizer", "lfq", "--recipes", str(recipes), "--out", str(tmp_path / "out"), "--data", str(tmp_path)])
    assert stopped.value.code == 2 and "1 to 24 bits" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_the_lookup_free_demo_stage_2_trains_end_to_end(demo, tmp_path):
    data, _ = demo
    run = DemoPlan(out=tmp_path, data=data, quantizer="lfq").fit("ett_sft", "tune", 2, 0, None, **{
        "trainer.val_check_interval": 2, "trainer.limit_val_batches": 1, "trainer.log_every_n_steps": 1})
    run.run()
    saved = torch.load(run.last_checkpoint, map_location="cpu", weights_only=True)
    assert saved["global_step"] == 2
    quantizer = saved["hyper_parameters"]["tokenizer"]["init_args"]["quantizer"]
    assert quantizer["class_path"].endswith("LookupFreeQuantizer")
    assert not any(key.startswith("tokenizer.quantize.") for key in saved["state_dict"])  # no codebook
    metrics = run.metrics()
    assert {"train/caption", "train/sample_entropy", "train/codebook_entropy", "val/psnr"} <= set(metrics)
