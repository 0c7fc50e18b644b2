"""Background sampler: a power/clock/temperature timeline on the windows' clock.

Every ``interval_s`` (default 0.1 s, scheduled on absolute deadlines so it does not
drift) the sampler reads what exists and appends one flat row. It runs in a child
process by default (``backend="auto"``): each NVML call through ctypes drops and
retakes the GIL, and in a thread those hand-offs stalled a CPU-bound torch loop by
up to ~5% on a 16-core host; a thread is used with fakes, custom clocks or a shared
NVML session, and as the fallback when the child cannot start. A row holds:
``t_s`` (``time.perf_counter``, the same clock as meter windows and the timer) and,
per GPU ``i``: ``gpu{i}_power_w``, ``gpu{i}_power_kind`` ("instant" or
"average-1s"), ``gpu{i}_sm_clock_mhz``, ``gpu{i}_mem_clock_mhz``, ``gpu{i}_temp_c``,
``gpu{i}_util_pct``, ``gpu{i}_mem_util_pct``, ``gpu{i}_throttle_mask``,
``gpu{i}_throttle_reasons`` (";"-joined); for the CPU ``cpu_package_power_w`` (and
``cpu_dram_power_w``) from RAPL energy deltas. A value that failed to read is None;
a metric the GPU does not support is left out of the rows entirely.

Use::

    from charbench.measure.sampler import Sampler

    with Sampler(interval_s=0.1) as sampler:
        t0 = time.perf_counter(); work(); t1 = time.perf_counter()
    stats = sampler.summarize(t0, t1)   # mean_gpu0_power_w, max_gpu0_temp_c, ...
    rows = sampler.rows()               # list of dicts, for samples.parquet
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import os
import select
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Literal

from charbench.errors import (
    ConfigError,
    MeasurementError,
    NvmlError,
    NvmlNoPermissionError,
    NvmlNotSupportedError,
    RaplError,
)
from charbench.measure.nvml import THROTTLE_REASONS, GpuRef, Nvml
from charbench.measure.rapl import DEFAULT_ROOT, RaplCounter, rapl_zones

log = logging.getLogger(__name__)

Sources = Literal["auto", "none", "gpu-power"]
Backend = Literal["auto", "thread", "process"]
_THROTTLE_ORDER = {name: i for i, (_, name) in enumerate(THROTTLE_REASONS)}


class _GpuProbe:
    """Reads one GPU's metrics, dropping each metric the GPU does not support."""

    def __init__(self, nvml: Nvml, gpu: GpuRef, power_only: bool) -> None:
        self.nvml = nvml
        self.gpu = gpu
        p = f"gpu{gpu.visible_index}_"
        self.prefix = p
        self.metrics: dict[str, Callable[[], dict[str, Any]]] = {"power": self._power}
        if not power_only:
            self.metrics.update(clocks=self._clocks, temp=self._temp, util=self._util,
                                throttle=self._throttle)
        self.keys = {
            "power": (p + "power_w", p + "power_kind"),
            "clocks": (p + "sm_clock_mhz", p + "mem_clock_mhz"),
            "temp": (p + "temp_c",),
            "util": (p + "util_pct", p + "mem_util_pct"),
            "throttle": (p + "throttle_mask", p + "throttle_reasons"),
        }
        self.notes: list[str] = []
        self._failed_once: set[str] = set()

    def _power(self) -> dict[str, Any]:
        watts, kind = self.nvml.power_w(self.gpu)
        return dict(zip(self.keys["power"], (watts, kind)))

    def _clocks(self) -> dict[str, Any]:
        return dict(zip(self.keys["clocks"], self.nvml.clocks_mhz(self.gpu)))

    def _temp(self) -> dict[str, Any]:
        return {self.keys["temp"][0]: self.nvml.temperature_c(self.gpu)}

    def _util(self) -> dict[str, Any]:
        return dict(zip(self.keys["util"], self.nvml.utilization_pct(self.gpu)))

    def _throttle(self) -> dict[str, Any]:
        mask, names = self.nvml.throttle_reasons(self.gpu)
        return dict(zip(self.keys["throttle"], (mask, ";".join(names))))

    def read(self, row: dict[str, Any]) -> None:
        for metric, fn in list(self.metrics.items()):
            try:
                row.update(fn())
            except (NvmlNotSupportedError, NvmlNoPermissionError) as exc:
                del self.metrics[metric]  # read only what exists
                self.notes.append(f"{self.prefix}{metric}: not sampled ({exc})")
            except NvmlError as exc:
                row.update(dict.fromkeys(self.keys[metric]))
                if metric not in self._failed_once:
                    self._failed_once.add(metric)
                    self.notes.append(f"{self.prefix}{metric}: read failed at least once ({exc})")


class Sampler:
    """Background thread that samples GPU and CPU telemetry every ``interval_s``."""

    def __init__(
        self,
        interval_s: float = 0.1,
        gpus: list[int] | None = None,
        nvml: Nvml | None = None,
        rapl_root: str = DEFAULT_ROOT,
        clock: Callable[[], float] = time.perf_counter,
        sources: Sources = "auto",
        wait: Callable[[float], bool] | None = None,
        backend: Backend = "auto",
    ) -> None:
        """Create a sampler (nothing is read until :meth:`start` or :meth:`sample_once`).

        Args:
            interval_s: seconds between samples.
            gpus: visible GPU indices to sample; None means every visible GPU.
            nvml: a shared NVML session; one is created when None.
            rapl_root: powercap class folder.
            clock: time source of ``t_s`` (keep ``time.perf_counter``: windows use it).
            sources: "auto" (GPUs via NVML and RAPL where usable), "gpu-power" (GPU
                power only, for energy integration) or "none".
            wait: ``wait(timeout_s) -> stop_requested``; defaults to the stop event's
                wait. Tests pass a fake that advances a fake clock.
            backend: "process" samples in a child process (no GIL shared with the
                workload: NVML's ctypes calls each drop and retake the GIL, which
                stalls a busy main thread), "thread" in a daemon thread, "auto" picks
                "process" unless a custom clock, wait or NVML session, "none" sources
                or a test fake from :mod:`charbench.measure.testing` need the thread.
        """
        if not interval_s > 0:
            raise ConfigError(f"sampler interval must be > 0 s, got {interval_s}")
        if sources not in ("auto", "none", "gpu-power"):
            raise ConfigError(f"sampler sources must be 'auto', 'gpu-power' or 'none', got {sources!r}")
        self.interval_s = float(interval_s)
        self._gpu_indices = gpus
        self._nvml = nvml
        self._rapl_root = rapl_root
        self._clock = clock
        self._sources = sources
        self._stop = threading.Event()
        self._wait = wait or self._stop.wait
        self._thread: threading.Thread | None = None
        self._rows: list[dict[str, Any]] = []
        self._times: list[float] = []
        self._probes: list[_GpuProbe] = []
        self._rapl: dict[str, list[RaplCounter]] = {}
        self._rapl_last: tuple[float, dict[str, int]] | None = None
        self._nvml_held = False
        self._ready = False
        self._notes: list[str] = []
        self.cpu_s = 0.0  # CPU time spent sampling (its own overhead); a child's after stop()
        self._sink: Callable[[dict[str, Any]], None] | None = None  # the child writes rows out
        if backend not in ("auto", "thread", "process"):
            raise ConfigError(f"sampler backend must be 'auto', 'thread' or 'process', got {backend!r}")
        in_process_only = (clock is not time.perf_counter or wait is not None or nvml is not None
                           or sources == "none" or os.name != "posix" or _fakes_installed())
        if backend == "process" and in_process_only:
            raise ConfigError("the process sampler needs the default clock, wait and NVML session, "
                              "real NVML/RAPL access and sources other than 'none'")
        self.backend = "thread" if backend == "thread" or (backend == "auto" and in_process_only) else "process"
        self._child: _ChildSampler | None = None
        self._child_gpus: list[int] = []
        self._sample_errors = 0

    # -- setup ------------------------------------------------------------------------------
    def _setup(self) -> None:
        if self._ready:
            return
        self._ready = True
        if self._sources == "none":
            return
        self._setup_gpus()
        if self._sources == "auto":
            self._setup_rapl()

    def _setup_gpus(self) -> None:
        nvml = self._nvml or Nvml()
        try:
            nvml.init()
        except NvmlError as exc:
            if self._gpu_indices:
                self._notes.append(f"GPU telemetry not sampled: {exc}")
            return
        self._nvml, self._nvml_held = nvml, True
        try:
            visible = nvml.visible_gpus()
        except NvmlError as exc:
            self._notes.append(f"GPU telemetry not sampled: {exc}")
            return
        wanted = range(len(visible)) if self._gpu_indices is None else self._gpu_indices
        for i in wanted:
            if 0 <= i < len(visible):
                self._probes.append(_GpuProbe(nvml, visible[i], self._sources == "gpu-power"))
            else:
                self._notes.append(f"gpu{i}: not visible ({len(visible)} visible GPU(s)); not sampled")

    def _setup_rapl(self) -> None:
        for zone in rapl_zones(self._rapl_root):
            if zone.domain is None:
                continue
            if not zone.readable:
                self._notes.append(f"{zone.domain}: not sampled ({zone.reason})")
                continue
            kind = "cpu_package_power_w" if zone.domain.startswith("cpu_package") else "cpu_dram_power_w"
            self._rapl.setdefault(kind, []).append(RaplCounter(zone, self._rapl_root))

    @property
    def notes(self) -> list[str]:
        """Why sources or metrics are not sampled, or failed to read at least once."""
        failed = [f"{self._sample_errors} sample(s) failed and were skipped"] if self._sample_errors else []
        return self._notes + [n for probe in self._probes for n in probe.notes] + failed

    @property
    def gpu_indices(self) -> list[int]:
        """Visible indices of the GPUs being sampled."""
        if self.backend == "process":
            return list(self._child_gpus)
        self._setup()
        return [p.gpu.visible_index for p in self._probes]

    # -- sampling ---------------------------------------------------------------------------
    def sample_once(self) -> dict[str, Any]:
        """Take one sample now, append it to the rows and return it."""
        self._setup()
        t = self._clock()
        row: dict[str, Any] = {"t_s": t}
        for probe in self._probes:
            probe.read(row)
        if self._rapl:
            self._read_rapl(t, row)
        if self._sink is not None:
            self._sink(row)
        else:
            self._rows.append(row)
            self._times.append(t)
        return row

    def _read_rapl(self, t: float, row: dict[str, Any]) -> None:
        now: dict[str, int] = {}
        for key, counters in self._rapl.items():
            try:
                now[key] = sum(c.update() for c in counters)
            except RaplError as exc:
                row[key] = None
                if not any(n.startswith(key) for n in self._notes):
                    self._notes.append(f"{key}: read failed at least once ({exc})")
        last = self._rapl_last
        for key in self._rapl:
            if key in row:
                continue
            if last is None or key not in last[1] or key not in now or t <= last[0]:
                row[key] = None  # the first sample has no previous reading to difference
            else:
                row[key] = (now[key] - last[1][key]) / 1e6 / (t - last[0])
        self._rapl_last = (t, now)

    def _loop(self) -> None:
        next_t = self._clock()
        while True:
            cpu0 = time.thread_time()
            try:
                self.sample_once()
            except Exception as exc:  # noqa: BLE001 - a telemetry hiccup must not kill the thread
                # Logged once with its traceback; a fault that repeats every interval would
                # otherwise flood stderr (or fill a child sampler's output).
                self._sample_errors += 1
                if self._sample_errors == 1:
                    log.exception("sampler: sample failed (later failures are counted in the notes)")
            self.cpu_s += time.thread_time() - cpu0
            next_t += self.interval_s
            now = self._clock()
            if next_t < now:  # fell behind (slow read, suspended): skip missed ticks
                next_t += math.ceil((now - next_t) / self.interval_s) * self.interval_s
            if self._wait(next_t - now):
                return

    # -- lifetime ---------------------------------------------------------------------------
    def start(self) -> Sampler:
        """Start sampling (idempotent); a process sampler returns once its first sample is taken."""
        if self.backend == "process":
            if self._child is None:
                try:
                    self._child = _ChildSampler(self.interval_s, self._gpu_indices, self._rapl_root,
                                                self._sources)
                    self._child_gpus = self._child.gpus
                    self._notes.extend(self._child.notes)
                except MeasurementError as exc:  # fall back rather than sample nothing
                    self._notes.append(f"process sampler unavailable ({exc}); sampling in a thread")
                    self.backend = "thread"
            if self.backend == "process":
                return self
        if self._thread is not None and self._thread.is_alive():
            return self
        self._setup()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="charbench-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sampling and release NVML (idempotent). Rows stay available."""
        if self._child is not None:
            child, self._child = self._child, None
            try:
                self._ingest(*child.stop())
            except Exception as exc:  # a sampler fault must never fail the measured run
                self._notes.append(f"sampler process did not stop cleanly ({type(exc).__name__}: {exc}); its last rows may be missing")
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval_s + 5.0)
            self._thread = None
        if self._nvml_held and self._nvml is not None:
            self._nvml.shutdown()
            self._nvml_held = False

    @property
    def running(self) -> bool:
        """Whether the sampling thread or process is alive."""
        if self._child is not None:
            return self._child.alive()
        return self._thread is not None and self._thread.is_alive()

    def _ingest(self, rows: list[dict[str, Any]], final: dict[str, Any] | None = None) -> None:
        for row in rows:
            self._rows.append(row)
            self._times.append(row["t_s"])
        if final:
            self.cpu_s = float(final.get("cpu_s", 0.0))
            self._notes.extend(n for n in final.get("notes", []) if n not in self._notes)

    def _sync_child(self) -> None:
        if self._child is not None:
            self._ingest(self._child.read_rows())

    def __enter__(self) -> Sampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- results ----------------------------------------------------------------------------
    def rows(self) -> list[dict[str, Any]]:
        """A copy of all samples so far, oldest first."""
        self._sync_child()
        return list(self._rows)

    def clear(self) -> None:
        """Drop the samples taken so far (e.g. between sweep points)."""
        self._rows = []
        self._times = []

    def window(self, t0_s: float, t1_s: float) -> list[dict[str, Any]]:
        """Samples with ``t0_s <= t_s <= t1_s``."""
        self._sync_child()
        rows, times = self._rows, self._times
        n = min(len(rows), len(times))
        lo = bisect.bisect_left(times, t0_s, 0, n)
        hi = bisect.bisect_right(times, t1_s, 0, n)
        return rows[lo:hi]

    def power_series(self, gpu: int, t0_s: float, t1_s: float) -> tuple[list[tuple[float, float]], set[str]]:
        """``([(t_s, watts), ...], kinds)`` of one GPU's power inside ``[t0_s, t1_s]``."""
        key, kind_key = f"gpu{gpu}_power_w", f"gpu{gpu}_power_kind"
        series, kinds = [], set()
        for row in self.window(t0_s, t1_s):
            if row.get(key) is not None:
                series.append((row["t_s"], row[key]))
                kinds.add(row[kind_key])
        return series, kinds

    def summarize(self, t0_s: float, t1_s: float) -> dict[str, Any]:
        """Statistics over the samples in ``[t0_s, t1_s]``; absent data -> key missing.

        Keys follow the naming rule (:mod:`charbench.record`, statistic first): ``sample_count``;
        per GPU ``mean_gpu{i}_power_w``, ``p50_gpu{i}_power_w``, ``p95_gpu{i}_power_w``,
        ``gpu{i}_power_kind``, ``mean_gpu{i}_sm_clock_mhz``, ``mean_gpu{i}_mem_clock_mhz``,
        ``max_gpu{i}_temp_c``, ``mean_gpu{i}_util_pct``, ``gpu{i}_throttle_reasons``
        (union, ";"-joined, "" when sampled and never throttled); CPU
        ``mean_cpu_package_power_w``, ``mean_cpu_dram_power_w``.
        """
        rows = self.window(t0_s, t1_s)
        out: dict[str, Any] = {}
        if not rows:
            return out
        out["sample_count"] = len(rows)
        for i in self.gpu_indices:
            p, g = f"gpu{i}_", f"gpu{i}"
            power = _values(rows, p + "power_w")
            if power:
                power.sort()
                out[f"mean_{g}_power_w"] = sum(power) / len(power)
                out[f"p50_{g}_power_w"] = _percentile(power, 0.50)
                out[f"p95_{g}_power_w"] = _percentile(power, 0.95)
                out[p + "power_kind"] = ";".join(sorted({r[p + "power_kind"] for r in rows
                                                         if r.get(p + "power_kind")}))
            _put_mean(out, f"mean_{g}_sm_clock_mhz", _values(rows, p + "sm_clock_mhz"))
            _put_mean(out, f"mean_{g}_mem_clock_mhz", _values(rows, p + "mem_clock_mhz"))
            _put_mean(out, f"mean_{g}_util_pct", _values(rows, p + "util_pct"))
            temps = _values(rows, p + "temp_c")
            if temps:
                out[f"max_{g}_temp_c"] = max(temps)
            reasons = [r[p + "throttle_reasons"] for r in rows if r.get(p + "throttle_reasons") is not None]
            if reasons:
                names = {n for text in reasons for n in text.split(";") if n}
                out[p + "throttle_reasons"] = ";".join(sorted(names, key=lambda n: (_THROTTLE_ORDER.get(n, 99), n)))
        _put_mean(out, "mean_cpu_package_power_w", _values(rows, "cpu_package_power_w"))
        _put_mean(out, "mean_cpu_dram_power_w", _values(rows, "cpu_dram_power_w"))
        return out


def _values(rows: list[dict[str, Any]], key: str) -> list[float]:
    return [r[key] for r in rows if r.get(key) is not None]


def _put_mean(out: dict[str, Any], key: str, values: list[float]) -> None:
    if values:
        out[key] = sum(values) / len(values)


def _percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile of an ascending list (numpy's default method)."""
    pos = (len(sorted_values) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _fakes_installed() -> bool:
    """Whether a test fake replaced the NVML import or the RAPL reader (in-process only)."""
    from charbench.measure import nvml as nvml_module
    from charbench.measure import rapl as rapl_module

    return (nvml_module.import_pynvml is not nvml_module.REAL_IMPORT_PYNVML
            or rapl_module._read_text is not rapl_module.REAL_READ_TEXT)


class _ChildSampler:
    """A sampler running in ``python -m charbench.measure._sampler_child``.

    The child appends one JSON line per sample to a temporary file, which the parent
    reads on demand (no reader thread, no pipe to fill); closing the child's stdin
    stops it, so it also stops if the parent dies. ``t_s`` is ``time.perf_counter``
    in the child: CLOCK_MONOTONIC, the same clock as the parent's on Linux.
    """

    START_TIMEOUT_S = 60.0

    def __init__(self, interval_s: float, gpus: list[int] | None, rapl_root: str, sources: str) -> None:
        fd, path = tempfile.mkstemp(prefix="charbench-samples-", suffix=".jsonl")
        os.close(fd)
        self.path = path
        self._offset = 0
        self._partial = b""
        params = {"interval_s": interval_s, "gpus": gpus, "rapl_root": str(rapl_root), "sources": sources}
        # stderr goes to an unlinked temporary file, not a pipe: nobody reads the child's
        # stderr while it runs, and a full pipe would block its sampling loop.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in _close
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "charbench.measure._sampler_child", json.dumps(params), path],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
            )
        except OSError as exc:
            self._stderr.close()
            os.unlink(path)
            raise MeasurementError(f"cannot run {sys.executable}: {exc}") from exc
        ready = self._read_line(self.START_TIMEOUT_S)
        if ready is None or ready.get("type") != "ready":
            err = self._kill()
            raise MeasurementError(f"sampler process did not start: {err or 'no ready message'}")
        self.gpus: list[int] = list(ready.get("gpus", []))
        self.notes: list[str] = list(ready.get("notes", []))

    def _read_line(self, timeout_s: float) -> dict[str, Any] | None:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        if not ready:
            return None
        line = self.proc.stdout.readline()
        try:
            return json.loads(line) if line else None
        except ValueError:
            return None

    def _kill(self) -> str:
        self.proc.kill()
        self.proc.wait()
        self._stderr.seek(0)
        err = self._stderr.read()
        self._close()
        os.unlink(self.path)
        return err.decode(errors="replace").strip()[-2000:]

    def _close(self) -> None:
        """Close the pipes and the stderr file (the process has exited)."""
        for f in (self.proc.stdin, self.proc.stdout, self._stderr):
            try:
                if f is not None:
                    f.close()
            except (OSError, ValueError):
                pass

    def alive(self) -> bool:
        """Whether the child is still running."""
        return self.proc.poll() is None

    def read_rows(self) -> list[dict[str, Any]]:
        """Rows appended since the last call (a trailing partial line waits for the next)."""
        with open(self.path, "rb") as fh:
            fh.seek(self._offset)
            data = fh.read()
        self._offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        return [json.loads(line) for line in lines if line]

    def stop(self) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        """Stop the child; return its remaining rows and its final report (notes, cpu_s)."""
        # EOF on stdin stops the child. Close it ourselves rather than through communicate():
        # communicate() flushes stdin first, which raises if the pipe was already closed
        # (seen once on a GPU host), and the child only ever writes one line to stdout.
        try:
            if self.proc.stdin is not None and not self.proc.stdin.closed:
                self.proc.stdin.close()
        except (OSError, ValueError):
            pass
        try:
            self.proc.wait(timeout=10.0)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        try:
            out = self.proc.stdout.read() if self.proc.stdout is not None else b""
        except (OSError, ValueError):
            out = b""
        self._close()
        final = None
        for line in out.decode(errors="replace").splitlines():
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if msg.get("type") == "final":
                final = msg
        rows = self.read_rows()
        os.unlink(self.path)
        return rows, final
