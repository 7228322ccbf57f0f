"""The package's shape: imports point one way, light entry points import light modules, rooms stay small."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "ett_lightning"
DATA_LAYERS = ["sequences", "streaming", "batching"]
"""The data sub-packages, lowest first: each imports only from those before it."""


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_time_imports(path: Path) -> set[str]:
    """Package modules ``path`` imports when it is imported: module level, not under ``if TYPE_CHECKING``."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for child in ast.walk(node) if not isinstance(node, ast.FunctionDef | ast.ClassDef) else []:
            if isinstance(child, ast.ImportFrom) and (child.module or "").startswith("ett_lightning"):
                found.add(child.module)
            elif isinstance(child, ast.Import):
                found.update(a.name for a in child.names if a.name.startswith("ett_lightning"))
    return found


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {name: {target for target in import_time_imports(path) if target in modules and target != name}
            for name, path in modules.items()}


def test_no_import_cycles():
    graph = import_graph()
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            pytest.fail("import cycle: " + " -> ".join(path[path.index(name):] + [name]))
        if name in done:
            return
        for target in sorted(graph[name]):
            visit(target, [*path, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])


def test_data_layers_import_downward_only():
    for name, targets in import_graph().items():
        layer = next((part for part in DATA_LAYERS if name.startswith(f"ett_lightning.data.{part}")), None)
        if layer is None:
            continue
        above = DATA_LAYERS[DATA_LAYERS.index(layer) + 1:]
        upward = [t for t in targets if any(t.startswith(f"ett_lightning.data.{part}") for part in above)]
        assert not upward, f"{name} imports {upward}, a layer above {layer}"
        assert "ett_lightning.data.datamodule" not in targets


def test_rooms_stay_small():
    lengths = {path: len(path.read_text().splitlines()) for path in PACKAGE.rglob("*.py")}
    assert not [str(p) for p, n in lengths.items() if n > 400]
    assert lengths[PACKAGE / "module.py"] <= 300
    for folder in {path.parent for path in lengths}:
        modules = [p for p in folder.glob("*.py") if p.name != "__init__.py"]
        assert len(modules) <= 12, f"{folder} holds {len(modules)} modules"


def imported_after(*statements: str) -> list[set[str]]:
    """The modules a fresh interpreter holds after each statement, run one after the other (what the statements
    print comes before the last line)."""
    steps = "".join(f"{statement}; snapshots.append(sorted(sys.modules)); " for statement in statements)
    code = f"import json, sys; snapshots = []; {steps}print(json.dumps(snapshots))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    return [set(modules) for modules in json.loads(result.stdout.splitlines()[-1])]


def test_the_converters_import_no_training_stack():
    (modules,) = imported_after("import ett_lightning.convert.cli")
    assert not {"lightning", "transformers", "timm", "lpips", "torchmetrics"} & modules


def test_the_training_cli_imports_no_demo_and_the_package_imports_nothing_heavy():
    """One interpreter, one import after the other: the CLI's set includes the module's, so neither may hold a
    demo, evaluation, timm, wandb or peft module."""
    package, with_module, cli = imported_after("import ett_lightning", "from ett_lightning import ETTModule",
                                               "import ett_lightning.cli")
    assert not {"torch", "lightning", "transformers"} & package
    assert "ett_lightning.module" in with_module - package
    assert not [m for m in cli if m.startswith(("ett_lightning.experiments", "ett_lightning.evaluation"))]
    assert not {"timm", "wandb", "peft"} & cli, "imported at every start, whichever model the recipe builds"
