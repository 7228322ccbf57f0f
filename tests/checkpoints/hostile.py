"""Objects whose unpickling runs code: what a hostile checkpoint carries. Each leaves a marker file when it runs."""

from __future__ import annotations

import os


class CreatesFile:
    """Unpickling this runs ``os.system("touch <path>")`` under a plain ``pickle.load``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)
