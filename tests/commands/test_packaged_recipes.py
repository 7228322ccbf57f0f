"""The recipes ship inside the package and run by name from any directory; the wheel installs like a library."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from ett_lightning.cli import main as lightning
from ett_lightning.commands.ett import main as ett
from ett_lightning.packaged_recipes import RECIPES, find_recipe, packaged_recipes, resolve_config_arguments

ROOT = Path(__file__).resolve().parents[2]


def test_every_recipe_of_the_repository_is_packaged_under_its_name():
    in_repository = sorted(path.relative_to(ROOT / "recipes").with_suffix("").as_posix()
                           for path in (ROOT / "recipes").rglob("*.yaml"))
    assert sorted(recipe.name for recipe in packaged_recipes()) == in_repository
    assert len(in_repository) >= 11
    assert RECIPES.resolve() == (ROOT / "recipes").resolve()  # one copy: the package links to recipes/
    assert find_recipe("demo/ett_sft").path.read_bytes() == (ROOT / "recipes/demo/ett_sft.yaml").read_bytes()
    assert find_recipe("recipes/ett_sft.yaml") == find_recipe("ett_sft") != find_recipe("demo/ett_sft")
    assert find_recipe("ett_nope") is None and find_recipe("../pyproject") is None


def test_config_names_resolve_only_where_no_file_of_that_name_exists(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    packaged = str(find_recipe("ett_sft").path)
    assert resolve_config_arguments(["fit", "--config", "ett_sft", "--config=demo/ett_sft"]) == [
        "fit", "--config", packaged, f"--config={find_recipe('demo/ett_sft').path}"]
    (tmp_path / "ett_sft").write_text("trainer: {}\n")  # the user's own file of that name wins
    assert resolve_config_arguments(["fit", "--config", "ett_sft"]) == ["fit", "--config", "ett_sft"]
    assert resolve_config_arguments(["fit", "--config", "mine.yaml", "--model", "ett_sft"]) == [
        "fit", "--config", "mine.yaml", "--model", "ett_sft"]
    assert resolve_config_arguments(["fit", "-c", "demo/ett_sft"])[-1] == str(find_recipe("demo/ett_sft").path)
    (tmp_path / "demo" / "ett_sft").mkdir(parents=True)  # a run folder named like its recipe, as under outputs/
    assert resolve_config_arguments(["fit", "--config", "demo/ett_sft"])[-1] == str(find_recipe("demo/ett_sft").path)


def test_a_packaged_recipe_runs_by_name_from_another_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        lightning(["fit", "--config", "ett_sft", "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["init_args"]["stage"] == "ett"
    assert printed["model"]["init_args"]["tokenizer"]["init_args"]["quantizer"]["init_args"]["codebook_size"] == 131072


def test_ett_recipes_lists_shows_and_copies(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ett(["recipes"])
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert "stage" in rows["name"] and "trains" in rows["name"]
    assert "align" in rows["ett_align"] and "projector" in rows["ett_align"]
    assert "tokenizer + projector + LLM" in rows["demo/ett_sft"]
    assert "tokenizer pre-training" in rows["demo/tokenizer"] and "image head" in rows["ett_t2i"]
    ett(["recipes", "show", "demo/t2i"])
    assert capsys.readouterr().out == (ROOT / "recipes/demo/t2i.yaml").read_text()
    ett(["recipes", "copy", "demo/ett_sft"])
    (tmp_path / "mine").mkdir()
    ett(["recipes", "copy", "ett_sft", "mine"])
    ett(["recipes", "copy", "ett_align", "mine/first.yaml"])
    assert (tmp_path / "ett_sft.yaml").read_bytes() == (ROOT / "recipes/demo/ett_sft.yaml").read_bytes()
    assert (tmp_path / "mine/ett_sft.yaml").read_bytes() == (ROOT / "recipes/ett_sft.yaml").read_bytes()
    assert (tmp_path / "mine/first.yaml").read_bytes() == (ROOT / "recipes/ett_align.yaml").read_bytes()
    ett(["recipes", "copy", "ett_align", "mine/ett_sft.yaml", "--force"])
    assert (tmp_path / "mine/ett_sft.yaml").read_bytes() == (ROOT / "recipes/ett_align.yaml").read_bytes()


def sh(command: list[str], cwd: Path, timeout: float = 300) -> str:
    run = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert run.returncode == 0, f"{command}:\n{run.stdout[-2000:]}\n{run.stderr[-4000:]}"
    return run.stdout


@pytest.mark.slow
def test_the_wheel_installs_and_runs_its_recipes_from_an_empty_directory(tmp_path):
    """The wheel built from a copy of the sources, installed without its dependencies into a fresh environment that
    sees this one's packages (not its editable install); from an empty folder: the recipes, shards, a 2-step fit
    of a recipe by name, and the demo's help."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "setup.cfg"):
        shutil.copy(ROOT / name, source / name)
    ignored = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(ROOT / "src", source / "src", symlinks=True, ignore=ignored)
    shutil.copytree(ROOT / "recipes", source / "recipes", ignore=ignored)
    sh([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"),
        str(source)], tmp_path)
    (wheel,) = (tmp_path / "dist").glob("ett_lightning-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = sorted(name for name in archive.namelist() if name.startswith("ett_lightning/recipes/"))
    assert shipped == sorted(f"ett_lightning/recipes/{path.relative_to(ROOT / 'recipes').as_posix()}"
                             for path in (ROOT / "recipes").rglob("*.yaml"))  # every recipe, in every folder

    environment = tmp_path / "env"
    sh([sys.executable, "-m", "venv", "--without-pip", str(environment)], tmp_path)
    python = environment / "bin" / "python"
    site = Path(sh([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path).strip())
    ours = sh([sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path).strip()
    (site / "test_environment_packages.pth").write_text(ours + "\n")  # dependencies only: no .pth of ours runs
    sh([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index", str(wheel)],
       tmp_path)

    empty = tmp_path / "empty"
    empty.mkdir()
    located = sh([str(python), "-c", "import ett_lightning; print(ett_lightning.__file__)"], empty)
    assert Path(located.strip()).is_relative_to(environment), located
    bin_dir = environment / "bin"
    assert "demo/ett_sft" in sh([str(bin_dir / "ett"), "recipes"], empty)
    sh([str(bin_dir / "ett-make-shards"), "data/synthetic", "--num-train", "32", "--num-val", "16",
        "--samples-per-shard", "16"], empty)
    sh([str(bin_dir / "lightning"), "fit", "--config", "demo/ett_sft", "--trainer.max_steps=2",
        "--trainer.val_check_interval=2", "--trainer.limit_val_batches=1", "--data.init_args.batch_size=4",
        "--data.init_args.samples_per_epoch=64"], empty)
    run = empty / "outputs/demo/ett_sft"
    assert (run / "checkpoints/last.ckpt").is_file() and (run / "metrics.json").is_file()
    assert "--num-seeds" in sh([str(bin_dir / "ett"), "demo", "--help"], empty)
    assert sorted(path.name for path in empty.iterdir()) == ["data", "outputs"]
