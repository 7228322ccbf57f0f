"""``ett lmms-task`` writes a task yaml that reads back as written for any folder name, and answers unusable
arguments in one line."""

from __future__ import annotations

import pytest
import yaml

from ett_lightning.evaluation.lmms_task import main as lmms_task_main


class TaskLoader(yaml.SafeLoader):
    """YAML as lmms-eval reads a task: ``!function`` tags name functions of the task folder's utils.py."""


TaskLoader.add_constructor("!function", lambda loader, node: f"function:{loader.construct_scalar(node)}")


@pytest.mark.parametrize("folder", ["eval #2", "run: final", "plain"])
def test_the_task_yaml_names_the_data_file_whatever_the_folder(synthetic_shards, tmp_path, folder):
    pytest.importorskip("datasets")
    out = tmp_path / folder / "task"
    lmms_task_main(["--shards", f"{synthetic_shards}/vqa/val-*.tar", "--out", str(out), "--name", "my_vqa"])
    task = yaml.load((out / "my_vqa.yaml").read_text(), Loader=TaskLoader)
    assert task["task"] == "my_vqa"
    assert task["dataset_kwargs"]["data_files"]["test"] == str((out / "my_vqa.parquet").resolve())
    assert (out / "my_vqa.parquet").is_file() and task["doc_to_text"] == "function:utils.doc_to_text"


@pytest.mark.parametrize("arguments,message", [
    (["--shards", "/nowhere/*.tar"], "glob '/nowhere/*.tar' matches no files"),
    (["--shards", "{shards}/caption/val-*.tar"], "holds no VQA samples"),
    (["--shards", "{shards}/vqa/val-*.tar", "--name", "../../escape"], "--name '../../escape' must be letters"),
    (["--shards", "{shards}/vqa/val-*.tar", "--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
])
def test_unusable_arguments_end_in_one_line(synthetic_shards, tmp_path, capsys, arguments, message):
    pytest.importorskip("datasets")
    arguments = [a.replace("{shards}", str(synthetic_shards)) for a in arguments]
    with pytest.raises(SystemExit) as exit_:
        lmms_task_main([*arguments, "--out", str(tmp_path / "task")])
    error = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in error
    assert error.strip().splitlines()[-1].startswith("ett lmms-task: error: ") and message in error
