"""Synchronizing timer: explicit warm-up, repeats, statistics, timed loops.

On a GPU every clock read is preceded by ``torch.cuda.synchronize`` and
:meth:`Timer.time` measures each repeat with CUDA events; on the CPU it uses
``time.perf_counter``. Warm-up calls are explicit and discarded.
:meth:`Timer.run_for_at_least` repeats an op until a minimum duration has passed,
checking the clock only once per batch (batches double until one lasts ~1% of the
duration), so the loop costs the same as a bare ``for`` loop of the op.

Use::

    from charbench.measure.timer import Timer

    timer = Timer("cuda:0")
    stats = timer.time(lambda: a @ b, warmup=3, repeats=10)     # stats.median_s
    loop = timer.run_for_at_least(lambda: a @ b, 2.0,
                                  on_start=lambda: meter.begin_window("p"))
    m = meter.end_window("p")                                     # loop.per_iter_s
"""

from __future__ import annotations

import re
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

from charbench.errors import ConfigError, DeviceError

_DEVICE_RE = re.compile(r"^(cpu|cuda)(?::(\d+))?$")


def parse_device(device: str) -> tuple[str, int | None]:
    """Split ``"cpu"``, ``"cuda"``, ``"cuda:1"`` into ``(kind, index)``.

    Raises:
        ConfigError: for anything else.
    """
    m = _DEVICE_RE.match(device.strip().lower())
    if not m or (m.group(1) == "cpu" and m.group(2) is not None):
        raise ConfigError(f"--device: unknown device '{device}'; valid: cpu, cuda, cuda:<index>")
    return m.group(1), int(m.group(2)) if m.group(2) is not None else None


@dataclass
class TimingStats:
    """Statistics of the timed repeats (warm-up excluded), all in seconds.

    ``stdev_s`` is the sample standard deviation, None with a single repeat.
    """

    repeats: int
    median_s: float
    mean_s: float
    min_s: float
    max_s: float
    stdev_s: float | None
    samples_s: list[float]

    @classmethod
    def from_samples(cls, samples_s: list[float]) -> TimingStats:
        """Build the statistics of a non-empty list of durations (s)."""
        if not samples_s:
            raise ValueError("TimingStats needs at least one sample")
        return cls(
            repeats=len(samples_s),
            median_s=statistics.median(samples_s),
            mean_s=statistics.fmean(samples_s),
            min_s=min(samples_s),
            max_s=max(samples_s),
            stdev_s=statistics.stdev(samples_s) if len(samples_s) > 1 else None,
            samples_s=list(samples_s),
        )


@dataclass
class LoopResult:
    """Outcome of :meth:`Timer.run_for_at_least`.

    Attributes:
        iterations: op calls inside the timed span (warm-up excluded).
        elapsed_s: ``t_end_s - t_start_s``.
        per_iter_s: ``elapsed_s / iterations``.
        t_start_s, t_end_s: span bounds on ``time.perf_counter`` (after syncs), the
            clock of meter windows and sampler rows.
        checks: how many times the clock was read inside the span.
    """

    iterations: int
    elapsed_s: float
    per_iter_s: float
    t_start_s: float
    t_end_s: float
    checks: int = 0


class Timer:
    """Times callables on a device, synchronizing before every clock read."""

    def __init__(self, device: str = "cpu", clock: Callable[[], float] = time.perf_counter) -> None:
        """Args: device: "cpu", "cuda" or "cuda:<i>"; clock: the host clock (perf_counter).

        Raises:
            ConfigError: unknown device string.
            DeviceError: a CUDA device without a usable CUDA torch.
        """
        self.device = device
        self.kind, self.index = parse_device(device)
        self._clock = clock
        self._torch: Any = None
        if self.kind == "cuda":
            import torch  # noqa: PLC0415 - torch only for GPU timing

            if not torch.cuda.is_available():
                raise DeviceError(
                    f"--device {device}: CUDA is not available (torch.cuda.is_available() is False); "
                    "use --device cpu or install a CUDA build of torch"
                )
            self._torch = torch
            self._torch_device = torch.device("cuda", self.index if self.index is not None else 0)

    def sync(self) -> None:
        """Wait for queued device work (no-op on the CPU)."""
        if self._torch is not None:
            self._torch.cuda.synchronize(self._torch_device)

    def time(self, fn: Callable[[], object], *, warmup: int = 1, repeats: int = 5) -> TimingStats:
        """Run ``fn`` ``warmup`` times (discarded), then time ``repeats`` calls.

        Raises:
            ConfigError: ``repeats < 1`` or ``warmup < 0``.
        """
        _check_counts(warmup, repeats)
        for _ in range(warmup):
            fn()
        self.sync()
        if self._torch is not None:
            return TimingStats.from_samples(self._time_events(fn, repeats))
        samples = []
        for _ in range(repeats):
            t0 = self._clock()
            fn()
            t1 = self._clock()
            samples.append(t1 - t0)
        return TimingStats.from_samples(samples)

    def _time_events(self, fn: Callable[[], object], repeats: int) -> list[float]:
        torch = self._torch
        with torch.cuda.device(self._torch_device):
            pairs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                     for _ in range(repeats)]
            for start, end in pairs:
                start.record()
                fn()
                end.record()
            self.sync()
            return [start.elapsed_time(end) / 1000.0 for start, end in pairs]  # ms -> s

    def run_for_at_least(
        self,
        fn: Callable[[], object],
        min_duration_s: float,
        *,
        warmup: int = 1,
        check_every: int | None = None,
        on_start: Callable[[], object] | None = None,
        on_end: Callable[[], object] | None = None,
    ) -> LoopResult:
        """Call ``fn`` repeatedly for at least ``min_duration_s`` seconds.

        Args:
            fn: the op.
            min_duration_s: the span lasts at least this long.
            warmup: calls before the span (discarded).
            check_every: fixed number of calls between clock checks; None calibrates:
                batches double until one lasts ~1% of ``min_duration_s`` (1-50 ms).
            on_start: called after warm-up and sync, right before the span starts
                (e.g. ``meter.begin_window``) so warm-up stays out of the window.
            on_end: called right after the final sync.

        Raises:
            ConfigError: non-positive duration, ``warmup < 0`` or ``check_every < 1``.
        """
        if not min_duration_s > 0:
            raise ConfigError(f"--duration must be > 0 s, got {min_duration_s}")
        if check_every is not None and check_every < 1:
            raise ConfigError(f"check_every must be >= 1, got {check_every}")
        _check_counts(warmup, 1)
        for _ in range(warmup):
            fn()
        self.sync()
        if on_start is not None:
            on_start()
        target_s = min(max(min_duration_s / 100.0, 1e-3), 0.05)
        batch = check_every or 1
        iterations = checks = 0
        clock, sync = self._clock, self.sync
        t_start = now = clock()
        while True:
            for _ in range(batch):
                fn()
            iterations += batch
            sync()
            before, now = now, clock()
            checks += 1
            if now - t_start >= min_duration_s:
                break
            if check_every is None and now - before < target_s:
                batch *= 2
        if on_end is not None:
            on_end()
        elapsed = now - t_start
        return LoopResult(iterations, elapsed, elapsed / iterations, t_start, now, checks)


def _check_counts(warmup: int, repeats: int) -> None:
    if warmup < 0:
        raise ConfigError(f"--warmup must be >= 0, got {warmup}")
    if repeats < 1:
        raise ConfigError(f"--repeats must be >= 1, got {repeats}")
