"""A checkpoint's ``hyper_parameters`` are a recipe for building the model again, read from an untrusted file.

Lightning rebuilds a LightningCLI run's module from them (``load_from_checkpoint``, ``ett export --ckpt``), and
``--ckpt_path`` merges them into the configuration: every nested ``class_path`` is imported and called with the
file's ``init_args``. So before anything is built, :func:`rebuild_refusal` checks that every class they name is this
package's or already imported (the configured ones are), that no entry switches on ``trust_remote_code`` (the
LLM's shipped Python) unless the caller allows it, and that no ``init_from`` makes the rebuild read another file.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

PACKAGE = "ett_lightning."
CLASS_KEYS = ("class_path", "_class_path")


def entries(value: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    """Every (path, key, value) of nested dicts and lists."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield path, str(key), item
            yield from entries(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from entries(item, f"{path}[{index}]")


def loaded_class(class_path: str) -> Any:
    """The object ``class_path`` names among modules already imported, so a name read from a checkpoint imports
    nothing; the path itself when it is not loaded."""
    module, _, name = class_path.rpartition(".")
    return getattr(sys.modules.get(module), name, class_path)


def rebuild_refusal(hyperparameters: dict[str, Any], source: str, remote_code: bool = False) -> str | None:
    """Why rebuilding a model from ``hyperparameters`` (read from ``source``) could run code other than this
    package's, or None. ``remote_code``: the caller allows an LLM's shipped code."""
    try:
        found = list(entries(hyperparameters))
    except RecursionError:
        return f"{source}: its hyper_parameters are nested too deeply to be read"
    for path, key, value in found:
        where = f"{source}: hyper_parameters {path + '.' if path else ''}{key}"
        if key in CLASS_KEYS:
            if not isinstance(value, str) or not (value.startswith(PACKAGE) or "." not in value
                                                  or loaded_class(value) is not value):
                return (f"{where} names {value!r:.120}, a class outside ett_lightning that is not imported: refusing "
                        "to import it. Rebuild your own classes in Python and export with "
                        "ett_lightning.checkpoints.export.export_module")
        if key == "trust_remote_code" and value is not False and not remote_code:
            return (f"{where} asks to run the LLM's shipped code: refused. If you trust the checkpoint's author, "
                    "pass --trust-remote-code (ett export) or set trust_remote_code in your own configuration")
        if key == "init_from" and value is not None:
            return f"{where} names a file to read weights from; a checkpoint holds its weights itself"
    return None
