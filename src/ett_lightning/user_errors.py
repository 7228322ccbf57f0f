"""User mistakes (a path, a file, a number) as opposed to bugs: the difference between one line and a traceback."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


class UserError(ValueError):
    """A mistake in what the user gave: ``ett`` prints the message as ``ett <command>: error: ...`` and exits with
    status 2 (a parser error's). The message names the input and the fix. Anything else keeps its traceback."""


def path_error(error: OSError) -> str:
    """One line for an operating-system error about a path the user gave (missing, unreadable, of the wrong kind,
    a name too long, already there)."""
    return f"{error.strerror or error}: {shortened(str(error.filename))}"


def shortened(text: str, limit: int = 500) -> str:
    """``text`` cut to ``limit`` characters, with ``...`` where it was cut (a file's content, a very long name)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def whole_number(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: a whole number from ``minimum`` to ``maximum``, else a parser error that says so."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r:.40} is not a whole number") from None
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f"from {minimum} to {maximum}" if maximum is not None else f"at least {minimum}"
            raise argparse.ArgumentTypeError(f"{value} is out of range (give a whole number {bounds})")
        return value

    return parse


def non_negative_float(text: str) -> float:
    """An argparse ``type``: a finite number >= 0, else a parser error that says so."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r:.40} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r:.40} is not a finite number >= 0")
    return value
