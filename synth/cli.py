"""What every command line of the project shares (``synth``'s and ``pipelines``'): the user error,
its one-line report, and the parsing of counts and numbers.

An error the user can cause is raised as ``UserError`` and reported by the entry point as one line,
``error: <what is wrong and what to do>``, with exit status 2 and no traceback. Counts take the forms
people type (``100000``, ``1e5``, ``2.5e3``, ``100_000``); a bad number, however bad (``abc``,
``1.5``, ``inf``, ``1e9999``), is one ``argparse.ArgumentTypeError`` line.

Standard library only, so ``--help`` stays fast and ``pipelines`` can import it from ``synth``.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import NoReturn


class UserError(Exception):
    """An error the user caused and can fix (bad input or environment): one line, exit status 2."""


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors raise ``UserError`` (one line, no usage block)."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message} (see --help)")


def one_line(message: BaseException | str, limit: int | None = 300) -> str:
    """``message`` with its whitespace (newlines included) collapsed, cut to ``limit`` characters."""
    text = " ".join(str(message).split())
    return text if limit is None else text[:limit]


def fail(message: BaseException | str, code: int = 2) -> NoReturn:
    """Print ``error: <message>`` as one line on stderr and exit with ``code`` (no traceback)."""
    print(f"error: {one_line(message, limit=None)}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def parse_number(text: str | int | float, minimum: int = 0) -> int:
    """A count written as ``1000``, ``1e5``, ``2.5e3`` or ``10_000`` → ``int``.

    Raises ``argparse.ArgumentTypeError`` (one line) for anything that is not a whole number
    ``>= minimum``, infinities and overflowing exponents included. Plain digits are read exactly.
    """
    problem = f"expected a whole number >= {minimum} like 1e5 or 100_000, got {text!r}"
    digits = str(text).strip().replace("_", "")
    try:
        value = float(digits) if any(c in digits for c in ".eE") else int(digits)
    except ValueError:
        raise argparse.ArgumentTypeError(problem) from None
    if not math.isfinite(value) or value != int(value) or value < minimum:
        raise argparse.ArgumentTypeError(problem)
    return int(value)


def parse_positive_number(text: str | int | float) -> int:
    """``parse_number`` for counts that must be at least 1 (``--n`` scenes)."""
    return parse_number(text, minimum=1)


def parse_positive_float(text: str) -> float:
    """A finite, strictly positive float (``--minutes 0.5``); ``argparse.ArgumentTypeError`` otherwise."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value
