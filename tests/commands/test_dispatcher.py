"""`ett` hands each command to its module, imports only what the command needs, and sits above the package:
nothing in ett_lightning imports it back."""

import ast
import sys
from pathlib import Path

import pytest

from ett_lightning.commands.ett import COMMANDS, main
from tests.test_layout import imported_after

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "ett_lightning"


def test_ett_alone_lists_every_command_and_asks_for_one(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.strip().splitlines()[-1] == "ett: error: give a command"
    assert all(f"  {name} " in err for name in COMMANDS)
    main(["--help"])
    listing = capsys.readouterr().out
    assert all(f"  {name} " in listing for name in COMMANDS)


def test_an_unknown_command_is_one_line_naming_the_choices(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fitt", "--config", "x.yaml"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == ("ett: error: unknown command 'fitt'; choose one of: "
                                               + ", ".join(COMMANDS))


def test_each_command_imports_only_its_own_module():
    """`ett recipes` starts without torch or Lightning; `ett fit` without the demo or the evaluation tools."""
    (dispatcher,) = imported_after("import ett_lightning.commands.ett")
    assert not {"torch", "lightning", "ett_lightning.cli", "ett_lightning.experiments.demo"} & dispatcher
    (recipes,) = imported_after("from ett_lightning.commands.ett import run; run('recipes', [])")
    assert not {"torch", "lightning"} & recipes
    (fit,) = imported_after("from ett_lightning.commands.ett import run\ntry: run('fit', ['--help'])\n"
                            "except SystemExit: pass")
    assert "ett_lightning.cli" in fit
    assert not [m for m in fit if m.startswith(("ett_lightning.experiments", "ett_lightning.evaluation"))]


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_nothing_in_the_package_imports_the_commands():
    """The dispatcher is the top floor: the demo depends on the training CLI, never on `ett` (no import circle)."""
    outside = [path for path in PACKAGE.rglob("*.py") if "commands" not in path.relative_to(PACKAGE).parts]
    assert len(outside) > 50
    importers = [str(p.relative_to(PACKAGE)) for p in outside
                 if any(name.startswith("ett_lightning.commands") for name in imported_modules(p))]
    assert importers == [str(Path("__main__.py"))]  # `python -m ett_lightning` is the dispatcher itself
    assert "ett_lightning.cli" in imported_modules(PACKAGE / "experiments" / "runs.py")
    assert not [n for n in imported_modules(PACKAGE / "cli.py") if n.startswith("ett_lightning.experiments")]


def test_the_console_scripts_start_the_dispatcher():
    scripts = Path(sys.executable).parent
    for script in ("ett", "ett-convert", "ett-make-shards"):
        assert "ett_lightning.commands.ett" in (scripts / script).read_text()
    assert "ett_lightning.cli" in (scripts / "lightning").read_text()
