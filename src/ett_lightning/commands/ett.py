"""``ett <command>``: one entry point that hands each command to the module that implements it.

``ett fit|validate|test|predict`` are the LightningCLI (``lightning ...`` is the same), the rest are the tools. A
command's module is imported only when it is run, so ``ett ask`` never loads the training CLI and ``ett fit`` never
loads the demo. A :class:`UserError` (and an operating-system error about a path: missing, unreadable, of the wrong
kind) ends the command with ``ett <command>: error: ...`` and exit status 2; any other exception is a bug and keeps
its traceback.
"""

from __future__ import annotations

import functools
import importlib
import sys
from importlib.metadata import PackageNotFoundError, version

from ett_lightning.console import console_entry
from ett_lightning.user_errors import UserError, path_error, shortened

TRAINING = ("fit", "validate", "test", "predict")  # the same as ett_lightning.cli.TRAINING_COMMANDS, not imported
COMMANDS = {  # name: (module whose main(argv) runs it, what it does)
    **{name: ("ett_lightning.cli", f"LightningCLI {name} (as `lightning {name}`)") for name in TRAINING},
    "recipes": ("ett_lightning.commands.recipes", "list the packaged recipes, or copy one to edit"),
    "export": ("ett_lightning.commands.export", "a run's checkpoint -> an export folder (tokenizer, projector, LLM)"),
    "ask": ("ett_lightning.evaluation.ask", "answer questions about images with an export"),
    "lmms-task": ("ett_lightning.evaluation.lmms_task", "VQA shards -> a local lmms-eval task"),
    "convert": ("ett_lightning.convert.cli", "LLaVA JSON, VQAv2 files or an image folder -> shards"),
    "make-shards": ("ett_lightning.convert.synthetic", "synthetic text-in-image shards (the demo's data)"),
    "demo": ("ett_lightning.experiments.demo", "frozen tokenizer vs ETT on synthetic data, end to end"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {about}" for name, (_, about) in COMMANDS.items()]
    return "usage: ett <command> [options]   (ett <command> --help for its options)\n\ncommands:\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Runs ``ett <command> ...``; ``argv`` defaults to the process's arguments."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        print(usage(), file=sys.stderr)
        fail("ett", "give a command")
    if argv[0] in ("-h", "--help"):
        print(usage())
        return
    if argv[0] == "--version":
        print(f"ett_lightning {package_version()}")
        return
    if argv[0] not in COMMANDS:
        fail("ett", f"unknown command {shortened(argv[0], 60)!r}; choose one of: {', '.join(COMMANDS)}")
    run(argv[0], argv if argv[0] in TRAINING else argv[1:])


def run(name: str, argv: list[str]) -> None:
    """Runs command ``name`` with its arguments, user mistakes ending as one line."""
    module = importlib.import_module(COMMANDS[name][0])
    try:
        module.main(argv)
    except UserError as mistake:
        fail(f"ett {name}", str(mistake))
    except OSError as problem:  # a path the user gave: missing, unreadable, of the wrong kind, a name too long
        if problem.filename is None:
            raise
        fail(f"ett {name}", path_error(problem))


def imported_command(argv: list[str]) -> None:
    """Imports the module of the command ``argv`` names, so the console entry freezes its objects too."""
    if argv and argv[0] in COMMANDS:
        importlib.import_module(COMMANDS[argv[0]][0])


console = console_entry(main, imported_command)  # the `ett` console script (and `python -m ett_lightning`)
# `ett-convert` and `ett-make-shards` are `ett convert` and `ett make-shards`
convert = console_entry(functools.partial(run, "convert"), lambda _: imported_command(["convert"]))
make_shards = console_entry(functools.partial(run, "make-shards"),
                            lambda _: imported_command(["make-shards"]))


def fail(prog: str, message: str) -> None:
    """``prog: error: message`` on stderr (the first line of it), exit status 2: how argparse ends a bad call."""
    first = message.strip().splitlines()[0] if message.strip() else "invalid input"
    print(f"{prog}: error: {shortened(first)}", file=sys.stderr)
    sys.exit(2)


def package_version() -> str:
    try:
        return version("ett-lightning")
    except PackageNotFoundError:
        return "unknown"


if __name__ == "__main__":
    console()
