"""Reading the tensors of a checkpoint pickle without running anything the file names.

Training checkpoints carry more than tensors: Lightning's hyper-parameters and callback states, LlamaGen's
``argparse.Namespace`` of training arguments, omegaconf containers, numpy RNG states. ``torch.load(weights_only=True)``
refuses such files, and ``weights_only=False`` would import and call whatever the pickle names (its ``__reduce__``
can be ``os.system``). The unpickler here builds only tensors and plain containers from a short allow-list; every
other class or function the file names becomes an inert :class:`Unloaded` stand-in, so nothing of the file's
choosing is imported or called, and the tensors come out.
"""

from __future__ import annotations

import codecs
import pickle
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any

import torch

ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex,
    ("builtins", "bytearray"): bytearray,
    ("builtins", "slice"): slice,
    ("collections", "OrderedDict"): OrderedDict,
    ("collections", "Counter"): Counter,
    ("_codecs", "encode"): codecs.encode,  # how protocol-2 pickles spell bytes
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): torch._utils._rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
}


class Unloaded:
    """Stands for an object (or the result of a call) that the file asked for and this loader does not build.

    Accepts whatever pickle does to objects (construction with any arguments, state, items, appends) and keeps
    nothing; ``origin`` names what the file asked for, for error messages.
    """

    origin = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, item: Any) -> None:
        pass

    def extend(self, items: Any) -> None:
        pass

    def __repr__(self) -> str:
        return f"<not loaded: {self.origin}>"


def stand_in(module: str, name: str) -> type[Unloaded]:
    """A fresh :class:`Unloaded` subclass naming ``module.name``; calling it, as pickle does, builds an inert object."""
    return type(name, (Unloaded,), {"origin": f"{module}.{name}", "__module__": __name__})


def allowed(module: str, name: str) -> Any:
    if (module, name) in ALLOWED_GLOBALS:
        return ALLOWED_GLOBALS[module, name]
    if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
        return getattr(torch, name)
    return None


class InertUnpickler(pickle.Unpickler):
    """``find_class`` answers from the allow-list, and with a stand-in for anything else."""

    def find_class(self, module: str, name: str) -> Any:
        found = allowed(module, name)
        return found if found is not None else stand_in(module, name)


class InertPickleModule:
    """What ``torch.load(pickle_module=...)`` needs: ``Unpickler`` and ``load``."""

    Unpickler = InertUnpickler

    @staticmethod
    def load(file: Any, **kwargs: Any) -> Any:
        return InertUnpickler(file, **kwargs).load()


def load_inert(path: str | Path) -> Any:
    """``torch.load`` of ``path`` on the CPU, with every non-allowed global replaced by an :class:`Unloaded`."""
    return torch.load(path, map_location="cpu", weights_only=False, pickle_module=InertPickleModule)
