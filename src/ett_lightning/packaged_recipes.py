"""The recipes that ship inside the package, found by name (``ett_sft``, ``demo/ett_sft``) from any directory.

The wheel carries ``ett_lightning/recipes/`` (in the repository a link to ``recipes/``, the one copy), so a user who
installs the package can run ``lightning fit --config demo/ett_sft`` without a clone: a ``--config`` value that
names no existing file but a packaged recipe is replaced by that recipe's path.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

RECIPES = Path(__file__).resolve().parent / "recipes"
SUFFIX = ".yaml"


@dataclass(frozen=True)
class Recipe:
    """One packaged recipe: its ``name`` (path below the recipes folder, without ``.yaml``) and its file."""

    name: str
    path: Path

    def summary(self) -> tuple[str, str, str]:
        """(stage, what trains, the first clause of the recipe's header comment) for ``ett recipes``."""
        text = self.path.read_text()
        model = (yaml.safe_load(text) or {}).get("model") or {}
        header = []
        for line in text.splitlines():
            if not line.startswith("#") or not line.lstrip("# ").strip():
                break
            header.append(line.lstrip("# ").strip())
        first_sentence = re.split(r"\. |; ", " ".join(header))[0].rstrip(".")
        stage = (model.get("init_args") or {}).get("stage")
        task = str(model.get("class_path", "")).rsplit(".", 1)[-1]
        if task == "TokenizerPretraining":
            return "tokenizer pre-training", "tokenizer", first_sentence
        trains = {"align": "projector", "ett": "tokenizer + projector + LLM", "posttrain": "projector + LLM"}
        extra = " + image head" if task == "TextToImage" else ""
        return str(stage), trains.get(stage, "?") + extra, first_sentence


def packaged_recipes() -> list[Recipe]:
    """Every packaged recipe, sorted by name (the real recipes before ``demo/``)."""
    paths = sorted(RECIPES.rglob(f"*{SUFFIX}"), key=lambda path: (len(path.relative_to(RECIPES).parts), path))
    return [Recipe(path.relative_to(RECIPES).with_suffix("").as_posix(), path) for path in paths]


def find_recipe(name: str) -> Recipe | None:
    """The packaged recipe called ``name`` (``.yaml`` optional; ``recipes/`` in front allowed), or None."""
    wanted = name.removeprefix("recipes/").removesuffix(SUFFIX)
    return next((recipe for recipe in packaged_recipes() if recipe.name == wanted), None)


CONFIG_FLAGS = ("--config", "-c")  # the LightningCLI's config option and its short form


def resolve_config_arguments(argv: list[str]) -> list[str]:
    """``argv`` with each ``--config NAME`` (``-c NAME``, ``--config=NAME``) that names no existing file but a
    packaged recipe replaced by the recipe's path; everything else as given (a missing file stays the parser's
    error)."""
    resolved = list(argv)
    for index, argument in enumerate(resolved):
        if argument in CONFIG_FLAGS and index + 1 < len(resolved):
            resolved[index + 1] = recipe_path(resolved[index + 1])
        elif argument.startswith("--config="):
            resolved[index] = "--config=" + recipe_path(argument.removeprefix("--config="))
    return resolved


def config_values(argv: list[str]) -> list[str]:
    """The values of every config option in ``argv`` (``--config X``, ``-c X``, ``--config=X``)."""
    values = [value for flag, value in zip(argv, argv[1:]) if flag in CONFIG_FLAGS]
    return values + [flag.removeprefix("--config=") for flag in argv if flag.startswith("--config=")]


def recipe_path(value: str) -> str:
    """``value`` when it is an existing file, else the path of the packaged recipe it names, else ``value`` (a run
    folder named like its recipe, as under ``outputs/``, does not hide the recipe)."""
    if os.path.isfile(value):  # never raises, also for names too long for the file system
        return value
    recipe = find_recipe(value)
    return str(recipe.path) if recipe else value
