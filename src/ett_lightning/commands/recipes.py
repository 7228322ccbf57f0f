"""``ett recipes``: the recipes that ship with the package, listed, shown, or copied to edit.

Any of them runs by name without a copy (``lightning fit --config demo/ett_sft``); a copy is for changing it.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from ett_lightning.packaged_recipes import Recipe, find_recipe, packaged_recipes
from ett_lightning.user_errors import UserError, shortened


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="ett recipes", description=__doc__.split("\n\n")[0])
    actions = root.add_subparsers(dest="action")
    actions.add_parser("list", help="name, stage, what trains and what the recipe is for (the default)")
    show = actions.add_parser("show", help="print a recipe")
    show.add_argument("name", help="a name from `ett recipes`, e.g. ett_sft or demo/ett_sft")
    copy = actions.add_parser("copy", help="write an editable copy of a recipe")
    copy.add_argument("name", help="a name from `ett recipes`, e.g. ett_sft or demo/ett_sft")
    copy.add_argument("dest", nargs="?", help="file or existing folder to write (default: <name's file name> here)")
    copy.add_argument("--force", action="store_true", help="replace an existing file")
    return root


def main(argv: list[str] | None = None) -> None:
    options = parser().parse_args(argv)
    if options.action in (None, "list"):
        print(listing(packaged_recipes()))
    elif options.action == "show":
        print(recipe_named(options.name).path.read_text(), end="")
    else:
        print(f"wrote {copy_recipe(recipe_named(options.name), options.dest, options.force)}")


def recipe_named(name: str) -> Recipe:
    recipe = find_recipe(name)
    if recipe is None:
        raise UserError(f"no packaged recipe called {shortened(name, 80)!r}; `ett recipes` lists them")
    return recipe


def listing(recipes: list[Recipe]) -> str:
    """A table: name, stage, what trains, the recipe's first line; then how to run one."""
    rows = [("name", "stage", "trains", "about"), *((recipe.name, *recipe.summary()) for recipe in recipes)]
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths)) + "  " + row[3] for row in rows]
    return "\n".join([*lines, "", "run one: lightning fit --config NAME (or ett fit); edit one: ett recipes copy NAME"])


def copy_recipe(recipe: Recipe, dest: str | None, force: bool) -> Path:
    """Copies ``recipe`` to ``dest`` (a file, or a folder to put ``<name>.yaml`` in; default: the current folder)."""
    target = Path(dest) if dest else Path(recipe.path.name)
    if target.is_dir():
        target = target / recipe.path.name
    elif dest and dest.endswith(("/", os.sep)):
        raise UserError(f"folder not found: {dest} (create it, or give another destination)")
    if os.path.lexists(target) and not force:  # a link, even one to nowhere, is the user's and stays
        raise UserError(f"{target} exists; give another destination, or --force to replace it")
    if not target.parent.is_dir():
        raise UserError(f"folder not found: {target.parent} (create it, or give another destination)")
    if target.exists() and target.resolve() == recipe.path.resolve():
        raise UserError(f"{target} is the packaged recipe itself; give another destination")
    shutil.copyfile(recipe.path, target)
    return target
