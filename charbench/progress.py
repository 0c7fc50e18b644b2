"""Progress reporting: a rich bar with ETA on a terminal, plain log lines otherwise.

::

    with Progress(total=12) as bar:
        for p in points:
            bar.describe(key); ...; bar.advance()

Plain lines go to stderr when stderr is not a TTY or ``CI`` is set, so logs stay readable.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any


def in_ci() -> bool:
    """True when the ``CI`` environment variable is set to anything but ``""``, ``0`` or ``false``."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def is_interactive(stream: Any) -> bool:
    """A rich bar makes sense: ``stream`` is a terminal and we are not under CI."""
    isatty = getattr(stream, "isatty", None)
    try:
        tty = bool(isatty()) if callable(isatty) else False
    except (ValueError, OSError):  # a closed stream
        tty = False
    return tty and not in_ci()


class Progress:
    """Counts finished points and shows them."""

    def __init__(self, total: int, enabled: bool = True, stream: Any = None) -> None:
        self.total = total
        self.enabled = enabled and total > 0
        self.stream = stream or sys.stderr
        self.done = 0
        self.current = ""
        self._t0 = time.perf_counter()
        self._rich: Any = None
        self._task: Any = None
        self.plain = not is_interactive(self.stream)

    def __enter__(self) -> Progress:
        if self.enabled and not self.plain:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            from rich.console import Console

            # The bar goes to the same stream as the plain lines (stderr): stdout stays clean for --json.
            self._rich = RichProgress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                transient=False, console=Console(file=self.stream),
            )
            self._rich.__enter__()
            self._task = self._rich.add_task("starting", total=self.total)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._rich is not None:
            self._rich.__exit__(*exc)

    def describe(self, text: str) -> None:
        """Name the point being run now."""
        self.current = text
        if self._rich is not None:
            self._rich.update(self._task, description=text[:60])

    def advance(self) -> None:
        """One more point finished."""
        self.done += 1
        if not self.enabled:
            return
        if self._rich is not None:
            self._rich.advance(self._task)
            return
        elapsed = time.perf_counter() - self._t0
        eta = elapsed / self.done * (self.total - self.done)
        print(f"[charbench] {self.done}/{self.total} {self.current} (elapsed {elapsed:.1f} s, ETA {eta:.1f} s)", file=self.stream, flush=True)
