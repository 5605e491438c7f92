"""Progress of long driver loops (evaluate, predict): items done, rate, ETA.

On a terminal one line is redrawn in place (``\\r``); in logs and CI (stdout not a terminal, or
``CI=true``) one plain line is printed every ``every`` items (default: about every 10 %) and at the
end. ``interactive()`` also decides whether Ray Data's own progress bars are on
(``pipelines.cli.env.apply_env_defaults``).
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO


def interactive(stream: TextIO | None = None) -> bool:
    """True when ``stream`` (default stdout) is a terminal and ``CI`` is not set to true."""
    if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
        return False
    stream = stream or sys.stdout
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _duration(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):  # nan / inf
        return "?"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class Progress:
    """``update(n)`` after each finished chunk; ``close()`` prints the final line."""

    def __init__(
        self,
        total: int,
        label: str,
        unit: str = "items",
        every: int = 0,
        stream: TextIO | None = None,
        tty: bool | None = None,
        clock=time.monotonic,
    ) -> None:
        self.total, self.label, self.unit = max(0, int(total)), label, unit
        self.stream = stream or sys.stdout
        self.tty = interactive(self.stream) if tty is None else tty
        self.every = every if every > 0 else max(1, -(-self.total // 10))
        self.clock = clock
        self.start = clock()
        self.done = 0
        self._next_line = self.every
        self._closed = False

    def line(self) -> str:
        elapsed = max(self.clock() - self.start, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        percent = f" ({100 * self.done / self.total:.0f} %)" if self.total else ""
        eta = f", ETA {_duration(left)}" if self.done < self.total else f", {_duration(elapsed)}"
        return f"[{self.label}] {self.done}/{self.total} {self.unit}{percent}, {rate:.2f} {self.unit}/s{eta}"

    def update(self, n: int = 1) -> None:
        self.done += int(n)
        if self.tty:
            self.stream.write("\r" + self.line() + "\x1b[K")
            self.stream.flush()
        elif self.done >= self._next_line and self.done < self.total:
            print(self.line(), file=self.stream, flush=True)
            while self._next_line <= self.done:
                self._next_line += self.every

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.tty:
            self.stream.write("\r" + self.line() + "\x1b[K\n")
            self.stream.flush()
        else:
            print(self.line(), file=self.stream, flush=True)
