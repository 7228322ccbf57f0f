"""`ett demo` end to end at a few steps per stage: every run happens, results.json/md/png are written."""

import json

import pytest
import yaml

from ett_lightning.data.synthetic import make_shards
from ett_lightning.experiments.demo import main
from ett_lightning.experiments.report import answer_type_lines, blind_lines


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


@pytest.mark.slow
def test_demo_chains_every_stage_and_writes_results(tmp_path):
    data = make_shards(tmp_path / "data", num_train=32, num_val=32, image_size=64, samples_per_shard=16, seed=2)
    out = tmp_path / "out"
    main(["--out", str(out), "--data", str(data), "--seeds", "3", "--tokenizer-steps", "2", "--align-steps", "2",
          "--tune-steps", "2", "--posttrain-steps", "2"])
    results = json.loads((out / "results.json").read_text())
    for arm in ("frozen", "ett"):
        assert 0.0 <= results[arm]["vqa_acc"] <= 1.0 and len(results[arm]["vqa_acc_per_seed"]) == 1
        assert 0.0 <= results[arm]["vqa_acc_blind"] <= 1.0
        assert {"vqa_acc_word", "vqa_acc_colour", "vqa_acc_yes_no", "vqa_acc_blind_colour"} <= set(results[arm])
    assert results["tokenizer"]["psnr_before"] > 0 and results["tokenizer"]["psnr_after"] > 0
    assert results["tokenizer"]["rfid_before"].startswith("unavailable")
    assert results["seeds"] == [3] and results["wall_seconds"] > 0
    probe = results["probe"]
    assert 0.0 <= probe["frozen"] <= 1.0 and probe["ett_per_seed"] == [probe["ett"]]
    assert 0.0 <= probe["colour"]["ett"] <= 1.0
    assert "probe: character from the codes" in (out / "results.md").read_text()
    assert "ETT - frozen" in (out / "results.md").read_text() and "grey images" in (out / "results.md").read_text()
    assert (out / "results.png").stat().st_size > 10_000
    frozen = yaml.safe_load((out / "seed3/frozen/tune/config.yaml").read_text())
    ett = yaml.safe_load((out / "seed3/ett/tune/config.yaml").read_text())
    assert frozen["model"]["init_args"]["trainable"] == {"tokenizer": False}
    assert ett["model"]["init_args"]["trainable"] == {"tokenizer": True}
    assert frozen["model"]["init_args"]["init_from"] == ett["model"]["init_args"]["init_from"] == str(
        out / "align" / "checkpoints" / "last.ckpt")
    assert frozen["seed_everything"] == ett["seed_everything"] == 3
