"""Progress reporting: a rich bar with ETA on a terminal, plain log lines otherwise.

::

    with Progress(total=12, keys=[point_key(p) for p in points]) as bar:
        for p in points:
            bar.describe(key); ...; bar.advance()

Plain lines go to stderr when stderr is not a TTY or ``CI`` is set, so logs stay readable.
Given the sweep's point keys, a point is named by the knobs that vary across the sweep
(``experiment=sigma value=8.0 dtype=bf16``), not by the whole key, whose varying values a
terminal would cut off. A plain log says when the first point starts (a long setup, such as
an engine starting and warming up, would otherwise print nothing for many seconds) and when
a point starts after one that took :data:`LONG_POINT_S` or more, or while points have taken
that long on average (a new resource group's first point may restart an engine).
"""

from __future__ import annotations

import os
import re
import sys
import time
from typing import Any

#: a point that took this long (s) makes the plain log say when the next one starts
LONG_POINT_S = 5.0
_PAIR = re.compile(r"(?:^|,)([A-Za-z_][A-Za-z0-9_.\-]*)=")


def _pairs(key: str) -> list[tuple[str, str]]:
    """``k1=v1,k2=v2`` as (name, value text) pairs (values may hold commas of their own)."""
    found = list(_PAIR.finditer(key))
    return [(m.group(1), key[m.end(): found[i + 1].start() if i + 1 < len(found) else len(key)]) for i, m in enumerate(found)]


def naming_knobs(points: list[dict[str, str]]) -> list[str]:
    """The knobs that tell ``points`` (name -> value text) apart, in first-seen order, without the redundant ones.

    A knob is dropped when it never varies, or when another kept knob decides it (gemm-power's
    ``param`` is a function of ``experiment``): ``experiment=sigma value=8.0`` says what
    ``experiment=sigma param=sigma value=8.0`` says. With a single point every knob names it.
    """
    names: list[str] = list(dict.fromkeys(n for p in points for n in p))
    vary = [n for n in names if len({p.get(n) for p in points}) > 1]
    if not vary:
        return names
    kept: list[str] = []
    for n in vary:
        decided = False
        for other in kept:
            mapping: dict[str | None, set[str | None]] = {}
            for p in points:
                mapping.setdefault(p.get(other), set()).add(p.get(n))
            if all(len(v) == 1 for v in mapping.values()):
                decided = True
                break
        if not decided:
            kept.append(n)
    return kept


def varying_knobs(keys: list[str]) -> list[str]:
    """Knob names that tell the point keys apart (:func:`naming_knobs`), in key order (all of them for a single point)."""
    return naming_knobs([dict(_pairs(k)) for k in keys])


def short_label(key: str, knobs: list[str] | None) -> str:
    """The point named by its varying knobs (``value=8.0 dtype=bf16``); the whole key when ``knobs`` is None."""
    if not knobs:
        return key
    pairs = dict(_pairs(key))
    shown = [f"{n}={pairs[n]}" for n in knobs if n in pairs]
    return " ".join(shown) or key


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

    def __init__(self, total: int, enabled: bool = True, stream: Any = None, keys: list[str] | None = None) -> None:
        self.total = total
        #: knobs that name a point (those that vary over ``keys``); None: the whole key
        self.knobs = varying_knobs(list(keys)) if keys else None
        self._point_t0: float | None = None
        self._last_point_s = 0.0
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
        """Name the point being run now (by its varying knobs when the sweep's keys were given)."""
        self.current = short_label(text, self.knobs)
        now = time.perf_counter()
        if self._rich is not None:
            # the varying values come first: a cut loses fixed knobs, never the one that varies
            self._rich.update(self._task, description=self.current[:80])
        elif self.enabled and (self.done == 0 or self._last_point_s >= LONG_POINT_S
                               or (now - self._t0) / self.done >= LONG_POINT_S):  # points are long on average (engine restarts)
            print(f"[charbench] {self.done + 1}/{self.total} started: {self.current}", file=self.stream, flush=True)
        self._point_t0 = now

    def advance(self) -> None:
        """One more point finished."""
        self.done += 1
        if self._point_t0 is not None:
            self._last_point_s = time.perf_counter() - self._point_t0
            self._point_t0 = None
        if not self.enabled:
            return
        if self._rich is not None:
            self._rich.advance(self._task)
            return
        elapsed = time.perf_counter() - self._t0
        eta = elapsed / self.done * (self.total - self.done)
        print(f"[charbench] {self.done}/{self.total} {self.current} (elapsed {elapsed:.1f} s, ETA {eta:.1f} s)", file=self.stream, flush=True)
