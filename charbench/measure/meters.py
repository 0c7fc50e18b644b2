"""Energy meters behind one window interface.

A meter measures named windows: ``begin_window(name)`` ... ``end_window(name)``
returns a :class:`Measurement` with the wall time, energy per domain (``gpu0``,
``cpu_package0``, ``cpu_dram0``) in J, average power in W and where each number came
from. Windows may nest or overlap. A value that could not be measured is None and
the reason is in ``warnings``; it is never reported as 0.

Meters: :class:`NvmlMeter` (the GPU's total-energy counter, or integrated sampled
power on GPUs without one, labeled), :class:`RaplMeter` (Linux powercap package and
DRAM zones), :class:`NullMeter` (nothing measurable: every domain None with the
reason) and :class:`CompositeMeter` (several at once).

Use::

    from charbench.measure.meters import make_meters

    meter, notes = make_meters("cuda:0")       # notes explain unusable meters
    meter.begin_window("point-3")
    run_the_workload()
    m = meter.end_window("point-3")
    m.energy_j["gpu0"], m.avg_power_w["gpu0"], m.provenance["gpu0"], m.warnings
"""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

from charbench.errors import DeviceError, MeasurementError, NvmlError, RaplError
from charbench.measure.nvml import GpuRef, Nvml
from charbench.measure.rapl import DEFAULT_ROOT, RaplCounter, rapl_available, rapl_zones
from charbench.measure.sampler import Sampler
from charbench.measure.timer import parse_device

COUNTER_UPDATE_PERIOD_S = 0.1
"""NVML's total-energy counter advances about every 100 ms."""

RAPL_UPDATE_PERIOD_S = 0.001
"""RAPL energy_uj advances about every millisecond."""

PROV_NVML_COUNTER = "nvml-energy-counter"
PROV_NVML_INTEGRATED = "nvml-power-integrated"
PROV_RAPL = "rapl"
PROV_NOT_MEASURED = "not-measured"

Clock = Callable[[], float]


@dataclass
class Measurement:
    """What one window measured.

    Attributes:
        name: the window's name.
        time_s: wall time of the window in seconds.
        energy_j: energy per domain in joules; None when not measured.
        avg_power_w: ``energy_j / time_s`` per domain in watts; None when not measured.
        provenance: per domain, "nvml-energy-counter", "nvml-power-integrated",
            "rapl" or "not-measured".
        warnings: why a value is missing or doubtful (short window, counter reset...).
        too_short: the window was shorter than a counter's update period.
        start_s, end_s: window bounds on the meter's clock (``time.perf_counter``).
    """

    name: str
    time_s: float
    energy_j: dict[str, float | None]
    avg_power_w: dict[str, float | None]
    provenance: dict[str, str]
    warnings: list[str] = field(default_factory=list)
    too_short: bool = False
    start_s: float | None = None
    end_s: float | None = None

    def total_energy_j(self, prefix: str = "gpu") -> float | None:
        """Sum of the domains starting with ``prefix`` (J); None if any is None or none exist."""
        values = [v for k, v in self.energy_j.items() if k.startswith(prefix)]
        if not values or any(v is None for v in values):
            return None
        return float(sum(v for v in values if v is not None))


@runtime_checkable
class Meter(Protocol):
    """The interface every meter implements."""

    name: str
    available: bool
    reason: str | None

    def domains(self) -> list[str]:
        """Domains this meter reports (``gpu0``, ``cpu_package0``, ...)."""
        ...

    def begin_window(self, name: str) -> None:
        """Open a window (raises MeasurementError if ``name`` is already open)."""
        ...

    def end_window(self, name: str) -> Measurement:
        """Close a window and return what it measured."""
        ...


def short_window_warning(name: str, time_s: float, period_s: float, counter: str = "energy counter") -> str:
    """The warning attached to a window shorter than a counter's update period."""
    return (
        f"window '{name}' lasted {time_s:.3g} s, shorter than the {counter}'s ~{period_s:g} s "
        "update period; lengthen it (e.g. --duration)"
    )


class _Windows:
    """Open-window bookkeeping shared by the meters."""

    def __init__(self) -> None:
        self._open: dict[str, object] = {}
        self._lock = threading.Lock()

    def open(self, name: str, state: object) -> None:
        with self._lock:
            if name in self._open:
                raise MeasurementError(f"window '{name}' is already open; end it before beginning it again")
            self._open[name] = state

    def check_new(self, name: str) -> None:
        if name in self._open:
            raise MeasurementError(f"window '{name}' is already open; end it before beginning it again")

    def close(self, name: str) -> object:
        with self._lock:
            if name not in self._open:
                raise MeasurementError(f"window '{name}' was never begun; call begin_window('{name}') first")
            return self._open.pop(name)

    def __len__(self) -> int:
        return len(self._open)


def _measurement(
    name: str, t0: float, t1: float, energy: dict[str, float | None], prov: dict[str, str],
    warnings: list[str], too_short: bool = False,
) -> Measurement:
    dt = t1 - t0
    power = {d: (e / dt if e is not None and dt > 0 else None) for d, e in energy.items()}
    return Measurement(name, dt, energy, power, prov, warnings, too_short, t0, t1)


class NullMeter:
    """A meter for what cannot be measured: every domain is None, with the reason."""

    name = "null"

    def __init__(self, domains: list[str] | None = None, reason: str = "energy not measured",
                 clock: Clock = time.perf_counter) -> None:
        """Args: domains: domains to report as not measured; reason: why; clock: time source."""
        self._domains = list(domains or [])
        self.available = False
        self.reason: str | None = reason
        self._clock = clock
        self._windows = _Windows()

    def domains(self) -> list[str]:
        """Domains reported as not measured."""
        return list(self._domains)

    def begin_window(self, name: str) -> None:
        """Open a window (only the time is measured)."""
        self._windows.check_new(name)
        self._windows.open(name, self._clock())

    def end_window(self, name: str) -> Measurement:
        """Close a window: time measured, every domain None with the reason."""
        t0 = self._windows.close(name)
        t1 = self._clock()
        energy: dict[str, float | None] = dict.fromkeys(self._domains)
        prov = dict.fromkeys(self._domains, PROV_NOT_MEASURED)
        warnings = [f"{', '.join(self._domains)}: {self.reason}"] if self._domains else []
        return _measurement(name, float(t0), t1, energy, prov, warnings)  # type: ignore[arg-type]

    def close(self) -> None:
        """Nothing to release."""


@dataclass
class _GpuState:
    ref: GpuRef
    domain: str
    mode: str  # PROV_NVML_COUNTER | PROV_NVML_INTEGRATED | PROV_NOT_MEASURED
    note: str | None = None


class NvmlMeter:
    """GPU energy from NVML.

    Volta and newer: the difference of ``nvmlDeviceGetTotalEnergyConsumption``
    ("nvml-energy-counter"). Older GPUs: sampled power integrated over the window
    (trapezoids; "nvml-power-integrated"), from the given sampler's rows or from an
    own power-only sampler that runs while a window is open.
    """

    name = "nvml"

    def __init__(
        self,
        gpus: list[int] | None = None,
        nvml: Nvml | None = None,
        clock: Clock = time.perf_counter,
        sampler: Sampler | None = None,
        sync: Callable[[], None] | None = None,
    ) -> None:
        """Create the meter; never raises for a missing NVML (``available`` is False).

        Args:
            gpus: visible GPU indices (``cuda:<i>``); None means every visible GPU.
            nvml: a shared NVML session; one is created when None.
            clock: time source (``time.perf_counter``, shared with the sampler).
            sampler: a running sampler whose power rows serve GPUs without an energy
                counter; without one the meter samples by itself.
            sync: called before each reading (e.g. ``Timer.sync`` to finish queued work).

        Raises:
            DeviceError: a requested GPU index is not visible.
        """
        self._clock = clock
        self._sync = sync
        self._sampler = sampler
        self._own_sampler: Sampler | None = None
        self._windows = _Windows()
        self._gpus: list[_GpuState] = []
        self._requested = [f"gpu{i}" for i in gpus] if gpus is not None else []
        self.available = False
        self.reason: str | None = None
        self._held = False
        self._nvml = nvml or Nvml()
        try:
            self._nvml.init()
        except NvmlError as exc:
            self.reason = f"NVML unavailable: {exc}"
            return
        self._held = True
        try:
            visible = self._nvml.visible_gpus()
        except NvmlError as exc:
            self.reason = f"NVML could not list GPUs: {exc}"
            return
        wanted = list(range(len(visible))) if gpus is None else list(gpus)
        for i in wanted:
            if not 0 <= i < len(visible):
                self.close()
                raise DeviceError(
                    f"--gpus: GPU {i} is not visible; {len(visible)} visible GPU(s) "
                    f"(CUDA_VISIBLE_DEVICES={_cvd()})"
                )
        self._gpus = [self._classify(visible[i]) for i in wanted]
        self._requested = [g.domain for g in self._gpus]
        self.available = any(g.mode != PROV_NOT_MEASURED for g in self._gpus)
        if not self.available:
            self.reason = "; ".join(g.note or "" for g in self._gpus) or "no visible GPU"

    def _classify(self, ref: GpuRef) -> _GpuState:
        domain = f"gpu{ref.visible_index}"
        mig = (f"{domain}: MIG instance {ref.mig_uuid}; energy is for the whole GPU"
               if ref.mig_uuid else None)
        try:
            if self._nvml.energy_counter_supported(ref):
                return _GpuState(ref, domain, PROV_NVML_COUNTER, mig)
        except NvmlError:
            pass
        try:
            _, kind = self._nvml.power_w(ref)
        except NvmlError as exc:
            return _GpuState(ref, domain, PROV_NOT_MEASURED,
                             f"{domain}: no energy counter and power unreadable ({exc})")
        note = (f"{domain}: no NVML energy counter on {ref.name} (needs Volta or newer); "
                f"energy integrated from sampled {kind} power")
        return _GpuState(ref, domain, PROV_NVML_INTEGRATED, note if not mig else f"{note}; {mig}")

    def domains(self) -> list[str]:
        """``gpu<i>`` for each metered GPU."""
        return list(self._requested)

    def _read(self, state: _GpuState) -> tuple[int | None, str | None]:
        try:
            return self._nvml.total_energy_mj(state.ref), None
        except NvmlError as exc:
            return None, str(exc)

    def begin_window(self, name: str) -> None:
        """Sync, stamp the time and read every GPU's counter."""
        self._windows.check_new(name)
        if any(g.mode == PROV_NVML_INTEGRATED for g in self._gpus):
            self._ensure_sampler()
        if self._sync is not None:
            self._sync()
        t0 = self._clock()
        readings = {g.domain: self._read(g) for g in self._gpus if g.mode == PROV_NVML_COUNTER}
        self._windows.open(name, (t0, readings))

    def _ensure_sampler(self) -> None:
        if self._sampler is not None or self._own_sampler is not None:
            return
        gpus = [g.ref.visible_index for g in self._gpus if g.mode == PROV_NVML_INTEGRATED]
        self._own_sampler = Sampler(COUNTER_UPDATE_PERIOD_S, gpus=gpus, nvml=self._nvml,
                                    clock=self._clock, sources="gpu-power").start()

    def end_window(self, name: str) -> Measurement:
        """Sync, stamp the time, read the counters and compute the window's energy."""
        t0, begun = self._windows.close(name)  # type: ignore[misc]
        if self._sync is not None:
            self._sync()
        t1 = self._clock()
        dt = t1 - t0
        energy: dict[str, float | None] = {}
        prov: dict[str, str] = {}
        warnings: list[str] = []
        if not self._gpus:
            for d in self._requested:
                energy[d], prov[d] = None, PROV_NOT_MEASURED
                warnings.append(f"{d}: {self.reason}")
        for g in self._gpus:
            if g.mode == PROV_NVML_COUNTER:
                energy[g.domain] = self._counter_energy(g, begun[g.domain], name, dt, warnings)
            elif g.mode == PROV_NVML_INTEGRATED:
                energy[g.domain] = self._integrated_energy(g, t0, t1, name, warnings)
            else:
                energy[g.domain] = None
            prov[g.domain] = g.mode if energy[g.domain] is not None else PROV_NOT_MEASURED
            if g.note:
                warnings.append(g.note)
        too_short = bool(self._gpus) and dt < COUNTER_UPDATE_PERIOD_S
        if too_short:
            warnings.insert(0, short_window_warning(name, dt, COUNTER_UPDATE_PERIOD_S))
        if not len(self._windows) and self._own_sampler is not None:
            self._own_sampler.stop()
            self._own_sampler = None
        return _measurement(name, t0, t1, energy, prov, warnings, too_short)

    def _counter_energy(self, g: _GpuState, begun: tuple[int | None, str | None], name: str,
                        dt: float, warnings: list[str]) -> float | None:
        e0, err0 = begun
        e1, err1 = self._read(g)
        if e0 is None or e1 is None:
            where = "beginning" if e0 is None else "end"
            warnings.append(f"{g.domain}: energy counter unreadable at the {where} of window "
                            f"'{name}' ({err0 or err1}); energy not measured")
            return None
        if e1 < e0:
            warnings.append(f"{g.domain}: energy counter went backwards in window '{name}' "
                            f"({e0} mJ -> {e1} mJ; driver reloaded or GPU reset); energy not measured")
            return None
        if e1 == e0:
            warnings.append(f"{g.domain}: energy counter did not advance in window '{name}' "
                            f"({dt:.3g} s); energy not measured")
            return None
        return (e1 - e0) / 1000.0

    def _integrated_energy(self, g: _GpuState, t0: float, t1: float, name: str,
                           warnings: list[str]) -> float | None:
        sampler = self._sampler or self._own_sampler
        index = g.ref.visible_index
        if sampler is None or index not in sampler.gpu_indices:
            warnings.append(f"{g.domain}: no sampler samples its power; energy not measured")
            return None
        series, _kinds = sampler.power_series(index, t0, t1)
        if len(series) < 2:
            warnings.append(f"{g.domain}: {len(series)} power sample(s) in window '{name}' "
                            f"({t1 - t0:.3g} s); need at least 2 to integrate; energy not measured")
            return None
        return integrate_power_j(series, t0, t1)

    def close(self) -> None:
        """Stop an own sampler and release NVML."""
        if self._own_sampler is not None:
            self._own_sampler.stop()
            self._own_sampler = None
        if self._held:
            self._nvml.shutdown()
            self._held = False


def integrate_power_j(series: list[tuple[float, float]], t0: float, t1: float) -> float:
    """Energy in J from ``[(t_s, watts), ...]`` samples inside ``[t0, t1]``.

    Trapezoids between samples; the first sample's power is held back to ``t0`` and
    the last one's forward to ``t1``.
    """
    energy = series[0][1] * (series[0][0] - t0) + series[-1][1] * (t1 - series[-1][0])
    for (ta, pa), (tb, pb) in zip(series, series[1:]):
        energy += (pa + pb) / 2.0 * (tb - ta)
    return energy


class RaplMeter:
    """CPU package and DRAM energy from Linux powercap RAPL (machine-wide).

    Only package zones and their dram sub-zones are summed (core/uncore sit inside a
    package, psys contains them). Wrap-around at ``max_energy_range_uj`` is corrected;
    while a window is open a background poll reads the counters often enough that no
    wrap is missed.
    """

    name = "rapl"

    def __init__(self, root: str | Path = DEFAULT_ROOT, clock: Clock = time.perf_counter) -> None:
        """Args: root: powercap class folder; clock: time source (``time.perf_counter``)."""
        self._clock = clock
        self._windows = _Windows()
        zones = [z for z in rapl_zones(root) if z.domain]
        zones.sort(key=lambda z: _natural(z.path.name))
        self._domains = [z.domain for z in zones if z.domain]
        self._counters = {z.domain: RaplCounter(z, root) for z in zones if z.readable and z.domain}
        self._unreadable = {z.domain: z.reason or "unreadable" for z in zones if not z.readable and z.domain}
        self.available = bool(self._counters)
        self.reason: str | None = None if self.available else rapl_available(root)[1]
        self._poll_stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._poll_s = min((c.safe_poll_interval_s() for c in self._counters.values()), default=1.0)

    def domains(self) -> list[str]:
        """``cpu_package<k>`` and ``cpu_dram<k>`` zones found (readable or not)."""
        return list(self._domains)

    def _read_all(self) -> dict[str, tuple[int | None, int, str | None]]:
        out: dict[str, tuple[int | None, int, str | None]] = {}
        for domain, counter in self._counters.items():
            try:
                out[domain] = (counter.update(), counter.epoch, None)
            except RaplError as exc:
                out[domain] = (None, counter.epoch, str(exc))
        return out

    def begin_window(self, name: str) -> None:
        """Stamp the time and read every readable zone."""
        self._windows.check_new(name)
        t0 = self._clock()
        self._windows.open(name, (t0, self._read_all()))
        self._start_poller()

    def end_window(self, name: str) -> Measurement:
        """Stamp the time, read the zones and compute the window's energy."""
        t0, begun = self._windows.close(name)  # type: ignore[misc]
        t1 = self._clock()
        ended = self._read_all()
        if not len(self._windows):
            self._stop_poller()
        dt = t1 - t0
        energy: dict[str, float | None] = {}
        prov: dict[str, str] = {}
        warnings: list[str] = []
        for domain in self._domains:
            energy[domain] = self._delta_j(domain, begun, ended, name, warnings)
            prov[domain] = PROV_RAPL if energy[domain] is not None else PROV_NOT_MEASURED
        too_short = bool(self._counters) and dt < RAPL_UPDATE_PERIOD_S
        if too_short:
            warnings.insert(0, short_window_warning(name, dt, RAPL_UPDATE_PERIOD_S, "RAPL counter"))
        return _measurement(name, t0, t1, energy, prov, warnings, too_short)

    def _delta_j(self, domain: str, begun: dict, ended: dict, name: str, warnings: list[str]) -> float | None:
        if domain in self._unreadable:
            warnings.append(f"{domain}: {self._unreadable[domain]}")
            return None
        (v0, ep0, err0), (v1, ep1, err1) = begun[domain], ended[domain]
        if v0 is None or v1 is None:
            warnings.append(f"{domain}: {err0 or err1}; energy not measured")
            return None
        if ep0 != ep1:
            warnings.append(f"{domain}: RAPL counter wrapped in window '{name}' and max_energy_range_uj "
                            "is unreadable; energy not measured")
            return None
        return (v1 - v0) / 1e6

    def _start_poller(self) -> None:
        if self._poller is not None or not self._counters:
            return
        self._poll_stop.clear()
        self._poller = threading.Thread(target=self._poll, name="charbench-rapl-poll", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._poll_stop.wait(self._poll_s):
            self._read_all()

    def _stop_poller(self) -> None:
        if self._poller is not None:
            self._poll_stop.set()
            self._poller.join(timeout=5.0)
            self._poller = None

    def close(self) -> None:
        """Stop the wrap-tracking poll."""
        self._stop_poller()


class CompositeMeter:
    """Several meters measuring the same windows; their Measurements are merged.

    The merged ``time_s`` is the first meter's (they bracket the same code and differ
    by microseconds). Meters are begun in order and ended in reverse order.
    """

    name = "composite"

    def __init__(self, meters: list[Meter]) -> None:
        """Args: meters: the meters, the primary (whose time is reported) first."""
        self.meters = list(meters)
        self.available = any(m.available for m in self.meters)
        reasons = [m.reason for m in self.meters if not m.available and m.reason]
        self.reason: str | None = "; ".join(reasons) if reasons and not self.available else None
        self._windows = _Windows()

    def domains(self) -> list[str]:
        """All meters' domains, in meter order."""
        return [d for m in self.meters for d in m.domains()]

    def begin_window(self, name: str) -> None:
        """Begin the window on every meter."""
        self._windows.open(name, None)
        begun: list[Meter] = []
        try:
            for meter in self.meters:
                meter.begin_window(name)
                begun.append(meter)
        except BaseException:
            for meter in reversed(begun):
                meter.end_window(name)
            self._windows.close(name)
            raise

    def end_window(self, name: str) -> Measurement:
        """End the window on every meter and merge the results."""
        self._windows.close(name)
        parts = [m.end_window(name) for m in reversed(self.meters)][::-1]
        if not parts:
            raise MeasurementError("CompositeMeter has no meters")
        first = parts[0]
        merged = Measurement(name, first.time_s, {}, {}, {}, [], False, first.start_s, first.end_s)
        for part in parts:
            merged.energy_j.update(part.energy_j)
            merged.avg_power_w.update(part.avg_power_w)
            merged.provenance.update(part.provenance)
            merged.warnings.extend(w for w in part.warnings if w not in merged.warnings)
            merged.too_short = merged.too_short or part.too_short
        return merged

    def close(self) -> None:
        """Close every meter that can be closed."""
        for meter in self.meters:
            close = getattr(meter, "close", None)
            if close is not None:
                close()

    def __enter__(self) -> CompositeMeter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_meters(
    device: str,
    gpus: list[int] | None = None,
    rapl_root: str | Path = DEFAULT_ROOT,
    *,
    nvml: Nvml | None = None,
    sampler: Sampler | None = None,
    sync: Callable[[], None] | None = None,
    clock: Clock = time.perf_counter,
) -> tuple[CompositeMeter, list[str]]:
    """Build the meters for a device.

    ``"cpu"``: RAPL if readable, else a NullMeter for ``cpu_package0`` with the
    reason. ``"cuda"``/``"cuda:<i>"``: NVML for ``gpus`` (default: ``[i]``, or every
    visible GPU) or a NullMeter with the reason, plus RAPL when readable.

    Returns:
        ``(meter, notes)``: notes say which meters are unusable and why.

    Raises:
        ConfigError: unknown device string. DeviceError: a GPU index not visible.
    """
    kind, index = parse_device(device)
    meters: list[Meter] = []
    notes: list[str] = []
    if kind == "cuda":
        wanted = gpus if gpus is not None else ([index] if index is not None else None)
        nvml_meter = NvmlMeter(wanted, nvml=nvml, clock=clock, sampler=sampler, sync=sync)
        if nvml_meter.available:
            meters.append(nvml_meter)
        else:
            nvml_meter.close()
            domains = [f"gpu{i}" for i in (wanted if wanted is not None else [0])]
            notes.append(f"GPU energy not measured: {nvml_meter.reason}")
            meters.append(NullMeter(domains, f"GPU energy not measured: {nvml_meter.reason}", clock))
    rapl = RaplMeter(rapl_root, clock)
    if rapl.available:
        meters.append(rapl)
    else:
        notes.append(f"CPU energy not measured: {rapl.reason}")
        if kind == "cpu" and rapl.domains():  # zones exist but are unreadable: say so per domain
            meters.append(rapl)
        elif kind == "cpu":
            meters.append(NullMeter(["cpu_package0"], f"CPU energy not measured: {rapl.reason}", clock))
    return CompositeMeter(meters), notes


def _natural(text: str) -> list[object]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _cvd() -> str:
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    return "unset" if value is None else repr(value)
