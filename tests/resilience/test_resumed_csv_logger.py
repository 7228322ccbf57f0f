"""metrics.csv across a resume: the earlier rows are back as soon as Lightning's logger has deleted them (nothing is
lost by a resumed run that stops before it logs), as written, less the steps the resumed run trains again; a file
that is not Lightning's, or a link, is not read and is dropped as Lightning drops it. The logger under
``lightning fit --ckpt_path=last`` is tested in tests/test_cli.py."""

import csv
import os

import pytest

from ett_lightning.resilience.resumed_csv_logger import ResumedCSVLogger

EARLIER = "epoch,step,train/total,val/psnr\n0,0,2.5,\n0,1,2.25,\n0,1,,17.125\n0,2,2.0,\n0,3,1.75,\n"


def rows(path):
    with open(path, newline="") as file:
        return [(row["step"], row["train/total"], row.get("val/psnr")) for row in csv.DictReader(file)]


def test_earlier_rows_stay_as_written_and_steps_trained_again_are_replaced(tmp_path):
    (tmp_path / "metrics.csv").write_text(EARLIER)
    logger = ResumedCSVLogger(save_dir=tmp_path, name="", version="", resumed_step=2)  # from step 2's checkpoint
    logger.log_metrics({"train/total": 1.5, "train/new": 0.5}, step=2)
    logger.save()
    assert rows(tmp_path / "metrics.csv") == [("0", "2.5", ""), ("1", "2.25", ""), ("1", "", "17.125"),
                                              ("2", "1.5", "")]
    assert os.listdir(tmp_path) == ["metrics.csv"]  # nothing left beside it


def test_a_resumed_run_that_stops_before_it_logs_keeps_the_earlier_rows(tmp_path):
    (tmp_path / "metrics.csv").write_text(EARLIER)
    logger = ResumedCSVLogger(save_dir=tmp_path, name="", version="", resumed_step=3)
    logger.log_hyperparams({})  # what Lightning does at the start of fit
    logger.log_metrics({"train/total": 1.0}, step=3)  # not yet saved: rows are written every 100 steps
    assert [row[0] for row in rows(tmp_path / "metrics.csv")] == ["0", "1", "1", "2"]  # back at once
    logger.finalize("failed")
    assert [row[0] for row in rows(tmp_path / "metrics.csv")] == ["0", "1", "1", "2", "3"]


def test_without_a_resumed_step_every_row_stays(tmp_path):
    (tmp_path / "metrics.csv").write_text(EARLIER)
    logger = ResumedCSVLogger(save_dir=tmp_path, name="", version="")
    logger.log_metrics({"val/psnr": 18.0}, step=3)
    logger.save()
    assert [row[0] for row in rows(tmp_path / "metrics.csv")] == ["0", "1", "1", "2", "3", "3"]


@pytest.mark.parametrize("content", [b"\x00\xff\xfe binary", b"name,value\na,1\n", b"epoch,step\n0,abc\n",
                                     b"epoch,step\n0,1,2\n", b"", b"step\n" + b"9" * 200_000 + b"\n"])
def test_a_file_that_is_not_lightnings_is_dropped_not_a_crash(tmp_path, content):
    (tmp_path / "metrics.csv").write_bytes(content)
    logger = ResumedCSVLogger(save_dir=tmp_path, name="", version="", resumed_step=5)
    logger.log_metrics({"train/total": 1.5}, step=0)
    logger.save()
    assert [(step, total) for step, total, _ in rows(tmp_path / "metrics.csv")] == [("0", "1.5")]
    assert not (tmp_path / "metrics.csv.kept").exists()


def test_a_link_named_metrics_csv_is_not_read(tmp_path):
    outside = tmp_path / "elsewhere.csv"
    outside.write_text(EARLIER)
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").symlink_to(outside)
    logger = ResumedCSVLogger(save_dir=run, name="", version="", resumed_step=5)
    logger.log_metrics({"train/total": 1.5}, step=0)
    logger.save()
    assert [(step, total) for step, total, _ in rows(run / "metrics.csv")] == [("0", "1.5")]
    assert outside.read_text() == EARLIER


def test_a_fit_from_the_start_keeps_no_row(tmp_path):
    (tmp_path / "metrics.csv").write_text(EARLIER)  # a run folder without a checkpoint (or a requeue Lightning finds)
    logger = ResumedCSVLogger(save_dir=tmp_path, name="", version="", resumed_step=0)
    logger.log_metrics({"train/total": 1.5}, step=0)
    logger.save()
    assert [(step, total) for step, total, _ in rows(tmp_path / "metrics.csv")] == [("0", "1.5")]


def test_rows_set_aside_by_a_stopped_start_come_back_and_a_leftover_link_is_not_written_through(tmp_path):
    run, victim = tmp_path / "run", tmp_path / "victim.txt"
    run.mkdir()
    (run / "metrics.csv.kept").write_text(EARLIER)  # stopped between Lightning's delete and the rows' return
    ResumedCSVLogger(save_dir=run, name="", version="", resumed_step=2).log_hyperparams({})
    assert [row[0] for row in rows(run / "metrics.csv")] == ["0", "1", "1"]
    victim.write_text("untouched")
    (run / "metrics.csv.kept").symlink_to(victim)
    ResumedCSVLogger(save_dir=run, name="", version="", resumed_step=1).log_hyperparams({})
    assert victim.read_text() == "untouched" and not (run / "metrics.csv").is_symlink()
    assert [row[0] for row in rows(run / "metrics.csv")] == ["0"]
