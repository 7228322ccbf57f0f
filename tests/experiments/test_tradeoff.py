"""`ett demo --alphas`: each extra ETT arm trains at its loss weight and is evaluated like the ett arm; the tables
of the tokenizer's health and of the alpha trade-off read what the runs wrote."""

import json

import pytest

from ett_lightning.experiments.demo import DemoPlan, arm_alpha, arm_names, main, run_arm
from ett_lightning.experiments.report import alpha_lines, health_lines
from ett_lightning.experiments.runs import LightningRun
from ett_lightning.experiments.tradeoff import alpha_rows, health_summary, recipe_alpha
from ett_lightning.packaged_recipes import RECIPES


def test_an_alpha_arm_tunes_the_tokenizer_at_its_alpha_and_evaluates_it(tmp_path, monkeypatch):
    started = []
    monkeypatch.setattr(LightningRun, "run", lambda self, reuse=False: started.append(self))
    plan = DemoPlan(out=tmp_path, alphas=[0.0, 1.0])
    assert arm_names(plan) == ["frozen", "ett", "ett_alpha0.0", "ett_alpha1.0"]
    close = arm_names(DemoPlan(alphas=[0.1234567, 0.1234568, 1e-300]))[2:]
    assert len(set(close)) == 3 and [arm_alpha(arm) for arm in close] == [0.1234567, 0.1234568, 1e-300]
    run_arm(plan, 0, "ett_alpha0.0", tmp_path / "align.ckpt", False, None)
    assert [run.out.name for run in started] == ["tune", "posttrain", "vqa_eval", "tokenizer_eval"]
    tune = started[0].config()["model"]["init_args"]
    assert tune["loss"]["init_args"]["alpha"] == 0.0 and tune["trainable"] == {"tokenizer": True}
    assert started[0].out == tmp_path / "seed0/ett_alpha0.0/tune"
    started.clear()
    run_arm(plan, 0, "ett", tmp_path / "align.ckpt", False, None)
    assert started[0].config()["model"]["init_args"]["loss"]["init_args"]["alpha"] == recipe_alpha(plan.recipes)


def test_alphas_are_checked_and_the_recipes_own_is_not_run_twice(tmp_path, monkeypatch, capsys):
    plans = []

    def planned(plan, reuse):
        plans.append(plan)
        raise InterruptedError  # the plan is all this test needs

    monkeypatch.setattr("ett_lightning.experiments.demo.run_demo", planned)
    with pytest.raises(InterruptedError):
        main(["--out", str(tmp_path), "--alphas", "0", "0.25", "1", "0"])
    assert plans[0].alphas == [0.0, 1.0]
    for bad in ("-1", "nan", "inf", "x"):
        with pytest.raises(SystemExit) as exit_info:
            main(["--out", str(tmp_path), "--alphas", bad])
        assert exit_info.value.code == 2 and "--alphas" in capsys.readouterr().err


def write_run(path, metrics) -> LightningRun:
    path.mkdir(parents=True)
    (path / "metrics.json").write_text(json.dumps(metrics))
    return LightningRun(str(RECIPES / "demo/ett_sft.yaml"), path)


def test_the_tables_read_each_arms_runs(tmp_path):
    health = {"health/probe_index_flips": 0.9, "health/probe_psnr_drop": 0.2, "health/probe_usage_ratio": 1.1,
              "health/window_usage": 0.6, "health/codebook_drift": 1.5, "health/encoder_drift": 0.4}
    arms = {arm: {"tune": [write_run(tmp_path / arm / "tune", {**health, "health/probe_psnr_drop": drop})],
                  "vqa": [write_run(tmp_path / arm / "vqa", {"val/vqa_acc": acc, "val/vqa_acc_word": acc / 2})],
                  "tokenizer": [write_run(tmp_path / arm / "tok", {"val/psnr": 16.0 - drop, "val/probe_word": 0.5})]}
            for arm, drop, acc in (("ett", 0.2, 0.8), ("ett_alpha0.0", 1.5, 0.7))}
    assert health_summary([write_run(tmp_path / "frozen", {"val/caption": 1.0})]) == {}
    assert health_summary(arms["ett"]["tune"])["guard_trips"] == 0.0
    rows = alpha_rows(arms, {"ett": 0.25, "ett_alpha0.0": 0.0}, psnr_before=16.0)
    assert [row["alpha"] for row in rows] == [0.0, 0.25]
    assert rows[0]["psnr_drop_db"] == pytest.approx(1.5) and rows[0]["probe_psnr_drop"] == 1.5
    lines = alpha_lines({"frozen": {"vqa_acc": 0.5}, "alphas": rows})
    assert "the frozen arm: 50.0 % VQA" in lines[1]
    assert lines[-2] == "| 0 | 70.0 | 35.0 | 50.0 | 1.50 | 90.0 | 1.1 | 0.0 |"
    table = health_lines({"health": {"frozen": {}, "ett": health_summary(arms["ett"]["tune"])}})
    assert "| probe token positions whose code changed (%) | 0 (not trained) | 90 |" in table
    assert health_lines({"health": {"frozen": {}, "ett": {}}}) == []
