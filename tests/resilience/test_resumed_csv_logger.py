"""metrics.csv across a resume: earlier rows before the resumed run's first logged step stay as written, the steps it
trains again are replaced, and a file that is not Lightning's is dropped (as Lightning does), never a crash. The
logger under ``lightning fit --ckpt_path=last`` is tested in tests/test_cli.py."""

import csv

import pytest

from ett_lightning.resilience.resumed_csv_logger import ResumedCSVLogger, earlier_rows

EARLIER = "epoch,step,train/total,val/psnr\n0,0,2.5,\n0,1,2.25,\n0,1,,17.125\n0,2,2.0,\n0,3,1.75,\n"


def rows(path):
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def test_earlier_rows_stay_as_written_and_steps_trained_again_are_replaced(tmp_path):
    (tmp_path / "metrics.csv").write_text(EARLIER)
    logger = ResumedCSVLogger(save_dir=tmp_path, name="", version="")
    logger.log_metrics({"train/total": 1.5, "train/new": 0.5}, step=2)  # resumed from the checkpoint of step 2
    logger.save()
    written = rows(tmp_path / "metrics.csv")
    assert [(row["step"], row["train/total"], row["val/psnr"]) for row in written] == [
        ("0", "2.5", ""), ("1", "2.25", ""), ("1", "", "17.125"), ("2", "1.5", "")]
    assert written[-1]["train/new"] == "0.5" and written[0]["train/new"] == ""


@pytest.mark.parametrize("content", [b"\x00\xff\xfe binary", b"name,value\na,1\n", b"epoch,step\n0,abc\n",
                                     b"step\n" + b"9" * 200_000 + b"\n"])
def test_a_file_that_is_not_lightnings_is_dropped_not_a_crash(tmp_path, content):
    (tmp_path / "metrics.csv").write_bytes(content)
    assert earlier_rows(tmp_path / "metrics.csv") == []
    logger = ResumedCSVLogger(save_dir=tmp_path, name="", version="")
    logger.log_metrics({"train/total": 1.5}, step=0)
    logger.save()
    assert [(row["step"], row["train/total"]) for row in rows(tmp_path / "metrics.csv")] == [("0", "1.5")]
