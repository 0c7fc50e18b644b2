"""Running a study: points -> measured records -> run folder -> report.

Every study command ends in :func:`run_study`. A study supplies its points and a
``run_point(params, ctx)`` that returns one :class:`~charbench.record.Record` (or several; a
plain dict of values also works); the runner owns the
run folder, meters, sampler, idle baseline, clock/power control, progress, resume and
failure handling::

    class MyStudy(Study):
        name = "gemm-power"
        def points(self): return expand({"dtype": ["fp32", "fp16"]})
        def run_point(self, params, ctx):
            with ctx.window("gemm") as w:
                loop = ctx.timer.run_for_at_least(fn, 5.0)
            return w.fields().set("time_per_gemm_s", loop.per_iter_s)   # a charbench.record.Record

    result = run_study(MyStudy(cfg), common, settings)
"""

from __future__ import annotations

import collections
import contextlib
import datetime as _dt
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from charbench.config import CommonOptions, to_jsonable
from charbench.errors import CharbenchError, ConfigError, RunStoreError
from charbench.noise import point_machine
from charbench.record import MACHINE_COLUMNS, Record, as_record, is_estimated, with_prefix
from charbench.results import RunStore
from charbench.runlock import RunLock, owner_fields
from charbench.settings import RunSettings
from charbench.signals import sigterm_as_interrupt
from charbench.sweep import point_key


#: provenance of power statistics from the background sampler (fallbacks and timelines, not energy)
PROV_SAMPLED = "sampler (mean of periodic power readings)"
#: provenance the runner stamps on every value of a study that measures nothing (a simulator)
PROV_SIMULATED = "estimated (simulated; nothing was measured)"
#: why a non-measuring study's meter reports nothing
NOT_MEASURING = "this study measures nothing (a simulator): its values are simulated estimates"


class Study:
    """Base class of a study. Subclasses set ``name`` and implement ``points``/``run_point``.

    What a study declares (class attributes) decides what the runner does around it:

    - ``resource_knobs``: knobs whose values need an expensive resource (an engine, a model
      pair, a pipeline of ranks). Points are grouped by them; the runner calls
      :meth:`acquire` once per group, hands the result to every point as ``ctx.resource``,
      and calls :meth:`release` on every exit path. A resumed run acquires only the groups
      with points left to run.
    - ``measures``: False for a study that measures nothing (a simulator): no meter, sampler
      or idle baseline starts, and every value it records is stamped ``estimated``.
    - ``ordered``: True when points run in the given order and carry state (training
      epochs): ``--shuffle`` is refused, a failed point stops the run, and
      ``ctx.checkpoint(state)`` / ``ctx.restore_checkpoint()`` let ``--resume`` continue
      from the last completed point.
    - ``prepare_inputs()`` / ``prepare(cache_dir, ctx)``: a phase before any measurement,
      cached under ``$CHARBENCH_HOME/cache/<study>/<key>`` (see :mod:`charbench.prepare_cache`).
    """

    name: str = ""
    #: ``module:function`` that returns the study's report sections (see charbench.report).
    report_hook: str | None = None
    #: knobs that select a resource; points sharing their values form one resource group
    resource_knobs: tuple[str, ...] = ()
    #: False for simulators: nothing is metered and every value is estimated
    measures: bool = True
    #: True for studies whose points run in order and carry state (e.g. training epochs)
    ordered: bool = False
    #: bump to invalidate every cached prepare entry of the study (its build changed)
    prepare_version: str = "1"
    #: keys of :meth:`config_dict` that record facts found at start-up, not options (not compared on --resume)
    derived_config_keys: tuple[str, ...] = ()

    def config_dict(self) -> dict[str, Any]:
        """The resolved config, as saved in config.json."""
        return to_jsonable(getattr(self, "cfg", {}))

    def points(self) -> list[dict[str, Any]]:
        """All sweep points (knob name -> value), before resume filtering."""
        raise NotImplementedError

    def gpus(self, device: str) -> list[int] | None:
        """Visible GPU indices the run uses when it spans several (e.g. tensor parallelism).

        None (the default) means just the ``--device`` GPU. The idle baseline, the sampler
        and ``ctx.meter`` cover every GPU returned here.
        """
        return None

    def prepare_inputs(self) -> Any:
        """What the prepare phase depends on (JSON-able), or None when the study prepares nothing."""
        return None

    def prepare(self, cache_dir: Path, log: Any) -> None:
        """Build what the study needs into ``cache_dir`` (runs once per distinct :meth:`prepare_inputs`).

        Runs before the run folder, meters, sampler and idle baseline exist; ``log(msg)``
        prints a progress line. Points find the result in ``ctx.cache_dir``.
        """

    def acquire(self, group: dict[str, Any], ctx: Context) -> Any:
        """Acquire the resource of one group (``group`` holds the ``resource_knobs`` values)."""
        return None

    def release(self, resource: Any, ctx: Context) -> None:
        """Release what :meth:`acquire` returned (called on every exit path)."""

    def setup(self, ctx: Context) -> None:
        """Called once before the first point (allocate, compile, check the device)."""

    def run_point(self, params: dict[str, Any], ctx: Context) -> Mapping[str, Any] | list[Mapping[str, Any]]:
        """Run one point and return its record(s): :class:`~charbench.record.Record` (or flat dicts), keys named by the naming rule."""
        raise NotImplementedError

    def finalize(self, store: RunStore, ctx: Context) -> dict[str, Any]:
        """Post-sweep analysis (fits, derived files). Returns the summary for ``--json``."""
        return {}

    def teardown(self, ctx: Context) -> None:
        """Called once after the sweep, on every exit path."""


@dataclass
class Window:
    """One measured window: what the meters and sampler saw between its edges."""

    name: str
    device: str
    t0_s: float = 0.0
    t1_s: float = 0.0
    measurement: Any = None
    sampler_stats: dict[str, Any] = field(default_factory=dict)
    baseline: Any = None
    #: why the meter could not close the window (its measurement is then None)
    error: str | None = None

    @property
    def time_s(self) -> float:
        """Wall time of the window (s)."""
        return self.t1_s - self.t0_s

    def _domains(self) -> list[str]:
        """The device's energy domains: GPU domains on CUDA, CPU (RAPL) domains on the CPU."""
        m = self.measurement
        if m is None:
            return []
        if self.device.startswith("cuda"):
            return [d for d in m.energy_j if d.startswith("gpu")]
        return [d for d in m.energy_j if d.startswith("cpu")]

    def _domain_reason(self, domain: str) -> str:
        warnings = list(getattr(self.measurement, "warnings", []) or [])
        mine = [w for w in warnings if domain in w]
        return "; ".join(mine or warnings) or "the meter returned no value"

    def fields(self, prefix: str = "") -> Record:
        """The window as a :class:`~charbench.record.Record`.

        ``energy_j`` is the device's energy (GPU domains on CUDA; RAPL package+DRAM on CPU),
        ``energy_net_j`` subtracts the idle baseline (gross - P_idle x t), ``mean_power_w`` is
        energy / time. Every domain the meters saw also gets ``<domain>_energy_j``. Missing
        values are null with their reason; measured ones name their meter in the provenance.
        ``prefix`` names the window inside each metric (:func:`charbench.record.with_prefix`):
        ``mean_steady_power_w``.
        """

        def key(name: str) -> str:
            return with_prefix(name, prefix)

        rec = Record()
        rec.set(key("time_s"), self.time_s)
        m = self.measurement
        domains = self._domains()
        if m is not None:
            for w in m.warnings:
                rec.warn(w)
            for d, v in m.energy_j.items():
                rec.set(key(f"{d}_energy_j"), v, m.provenance.get(d, "unknown"), reason=self._domain_reason(d))
        if m is None or not domains:
            reason = "no energy meter usable for this device (see `charbench env`, meters)"
            if m is not None and m.warnings:
                reason += "; " + "; ".join(m.warnings)
            rec.null(key("energy_j"), reason)
        else:
            missing = [d for d in domains if m.energy_j.get(d) is None]
            if missing:
                rec.null(key("energy_j"), f"domain(s) {', '.join(missing)} not measured: "
                         + "; ".join(dict.fromkeys(self._domain_reason(d) for d in missing)))
            else:
                rec.set(key("energy_j"), float(sum(m.energy_j[d] for d in domains)),
                        ",".join(sorted({m.provenance.get(d, "unknown") for d in domains})))
        t = self.time_s
        rec.derive(key("mean_power_w"), lambda e: e / t if t > 0 else None, key("energy_j"), reason="window of zero length")
        self._net_energy(rec, key, domains)
        to_record = getattr(self.baseline, "to_record", None)
        if to_record is not None:
            idle_prov = getattr(self.baseline, "provenance", None) or {}
            for k, v in to_record().items():
                d = k[5:-8] if k.startswith("idle_") and k.endswith("_power_w") else None
                rec.set(k, v, f"{idle_prov[d]} (idle baseline)" if d in idle_prov else None,
                        reason="; ".join(self.baseline.warnings) or "idle power not measured")
        for k, v in self.sampler_stats.items():
            # sampled power: a timeline statistic, not counter energy
            rec.set(key(k), v, PROV_SAMPLED if k.endswith("_w") else None)
        return rec

    def _net_energy(self, rec: Record, key: Callable[[str], str], domains: list[str]) -> None:
        """``energy_net_j``: the window's energy minus the idle baseline's power x time."""
        if rec.get(key("energy_j")) is None:
            rec.null(key("energy_net_j"), rec.reason(key("energy_j")) or "not measured")
            return
        if self.baseline is None:
            rec.null(key("energy_net_j"), "no idle baseline (set --idle-baseline SECONDS > 0)")
            return
        idle = [self.baseline.power_w.get(d) for d in domains]
        if any(v is None for v in idle):
            rec.null(key("energy_net_j"), "idle baseline not measured for every domain")
            return
        idle_w = float(sum(idle))  # type: ignore[arg-type]
        t = self.time_s
        rec.derive(key("energy_net_j"), lambda e: e - idle_w * t, key("energy_j"), formula="minus idle baseline")


class Context:
    """What ``run_point`` gets: device, timer, meters, sampler, control, baseline, the group's resource.

    Windows are measured either as a block (``with ctx.window(name) as w``) or opened and
    closed at arbitrary moments (``ctx.begin_window(name)`` ... ``ctx.end_window(name)``,
    or ``ctx.cancel_window(name)`` to drop one), e.g. a steady state that a load generator
    detects while it runs. ``gpus=`` meters a subset of the run's GPUs; the subset's meter
    and GPU control are made once and released by the runner.
    """

    def __init__(self, device: str, store: RunStore, seed: int, settings: RunSettings, log: Any, gpus: list[int] | None = None,
                 *, measures: bool = True) -> None:
        from charbench.device import gpu_index
        from charbench.measure import Timer, make_meters
        from charbench.measure.meters import NullMeter

        self.device = device
        self.store = store
        self.seed = seed
        self.settings = settings
        self.log = log
        self.measures = measures
        idx = gpu_index(device)
        self.gpus: list[int] = list(gpus) if gpus and idx is not None else ([idx] if idx is not None else [])
        self.timer = Timer(device)
        if measures:
            self.meter, self.meter_notes = make_meters(device, gpus=self.gpus or None)
        else:
            self.meter, self.meter_notes = NullMeter([], reason=NOT_MEASURING), []
        self.sampler: Any = None
        self.baseline: Any = None
        self._control: Any = None
        self.sample_rows: list[dict[str, Any]] = []
        #: how many of the sampler's rows are in the run folder (each save appends only the rest)
        self.samples_stored = 0
        #: the current resource group's resource (see :attr:`Study.resource_knobs`)
        self.resource: Any = None
        #: the prepared cache folder (see :meth:`Study.prepare`), None when the study prepares nothing
        self.cache_dir: Path | None = None
        self._reacquire: Any = None
        self._open: dict[str, tuple[Window, Any]] = {}
        self._subset_meters: dict[tuple[int, ...], Any] = {}
        self._subset_controls: dict[tuple[int, ...], Any] = {}
        self._checkpoint: Any = None

    @property
    def control(self) -> Any:
        """A :class:`charbench.measure.control.GpuControl` over this run's GPUs (restored at the end)."""
        if self._control is None:
            if not self.gpus:
                raise ConfigError("--sm-freq/--power-limit need a GPU; use --device cuda")
            from charbench.measure.control import GpuControl

            self._control = GpuControl(self.gpus)
            self._control.__enter__()
        return self._control

    def control_for(self, gpus: list[int] | None) -> Any:
        """GPU control over ``gpus`` (the run's own control when they are the run's GPUs)."""
        if not gpus or list(gpus) == self.gpus:
            return self.control
        key = tuple(gpus)
        if key not in self._subset_controls:
            from charbench.measure.control import GpuControl

            ctl = GpuControl(list(gpus))
            ctl.__enter__()
            self._subset_controls[key] = ctl
        return self._subset_controls[key]

    def restore_controls(self) -> None:
        """Put every GPU this run has changed back to its defaults (between points)."""
        for ctl in [self._control, *self._subset_controls.values()]:
            if ctl is not None:
                ctl.restore()

    def meter_for(self, gpus: list[int] | None) -> Any:
        """The meter over ``gpus`` (the run's meter when they are the run's GPUs)."""
        if not self.measures or not gpus or list(gpus) == self.gpus:
            return self.meter
        key = tuple(gpus)
        if key not in self._subset_meters:
            from charbench.measure import make_meters

            self._subset_meters[key], notes = make_meters(self.device, gpus=list(gpus))
            for n in notes:
                self.log(f"note: {n}")
        return self._subset_meters[key]

    def begin_window(self, name: str, t: float | None = None, *, gpus: list[int] | None = None) -> None:
        """Open a measured window now (or at ``t``, a ``time.perf_counter()`` value already taken).

        Raises:
            ValueError: a window of that name is already open.
        """
        if name in self._open:
            raise ValueError(f"window {name!r} is already open; end_window or cancel_window it first")
        meter = self.meter_for(gpus)
        w = Window(name=name, device=self.device, baseline=self.baseline)
        if t is None:
            self.timer.sync()
        meter.begin_window(name)
        w.t0_s = time.perf_counter() if t is None else t
        self._open[name] = (w, meter)

    def end_window(self, name: str, t: float | None = None, *, raise_errors: bool = True) -> Window:
        """Close an open window and return what its meter and the sampler saw.

        With ``raise_errors=False`` a meter that fails to close the window leaves
        ``measurement`` None and its error in ``Window.error`` instead of raising.

        Raises:
            ValueError: no window of that name is open.
        """
        if name not in self._open:
            raise ValueError(f"window {name!r} is not open (begin_window it first)")
        w, meter = self._open.pop(name)
        if t is None:
            self.timer.sync()
        w.t1_s = time.perf_counter() if t is None else t
        try:
            w.measurement = meter.end_window(name)
        except Exception as exc:
            if raise_errors:
                raise
            w.error = f"{type(exc).__name__}: {exc}"
        if self.sampler is not None:
            w.sampler_stats = self.sampler.summarize(w.t0_s, w.t1_s)
        return w

    def cancel_window(self, name: str) -> None:
        """Drop an open window (its values are discarded); a window that is not open is ignored."""
        entry = self._open.pop(name, None)
        if entry is None:
            return
        cancel = getattr(entry[1], "cancel_window", None)
        with contextlib.suppress(Exception):  # the point is already failing or abandoning the window
            (cancel or entry[1].end_window)(name)

    def open_windows(self) -> list[str]:
        """Names of the windows that are open now."""
        return list(self._open)

    @contextlib.contextmanager
    def window(self, name: str, *, gpus: list[int] | None = None) -> Iterator[Window]:
        """Measure a window as a block; the device is synchronized at both edges."""
        self.begin_window(name, gpus=gpus)
        w = self._open[name][0]
        try:
            yield w
        finally:  # closed (and measured) even when the block raised: the meter's window must end
            self.end_window(name)

    def reacquire(self) -> Any:
        """Release the current group's resource and acquire it again (e.g. an engine that died)."""
        if self._reacquire is None:
            raise RuntimeError("reacquire() is only available while a resource group runs")
        self.resource = self._reacquire()
        return self.resource

    def checkpoint(self, state: Any) -> None:
        """Keep ``state`` (picklable) as the study's state after the current point.

        It is written into the run folder only once the point's record is stored, so a
        crash in between never leaves a checkpoint ahead of the results (``--resume``
        reruns that point from the previous checkpoint).
        """
        self._checkpoint = state

    def restore_checkpoint(self) -> Any:
        """The state saved after the last completed point of a resumed run (None on a fresh run)."""
        return self.store.read_checkpoint()

    def cooldown(self) -> None:
        """Sleep ``--cooldown`` seconds between points."""
        if self.settings.cooldown_s > 0:
            time.sleep(self.settings.cooldown_s)

    def close(self) -> None:
        """Restore clocks/power limits, stop the sampler and release the meters (each step runs even if another fails)."""
        for name in list(self._open):
            self.cancel_window(name)
        controls = [c for c in (self._control, *self._subset_controls.values()) if c is not None]
        meters = [self.meter, *self._subset_meters.values()]
        self._control = None
        self._subset_controls.clear()
        self._subset_meters.clear()
        try:
            _each(lambda ctl: ctl.__exit__(None, None, None), controls)
        finally:
            try:
                if self.sampler is not None:
                    self.sampler.stop()
                    self.sample_rows = self.sampler.rows()
            finally:
                _each(lambda m: getattr(m, "close", lambda: None)(), meters)


class LiveWindows:
    """Windows that a running workload opens and closes from callbacks, on a :class:`Context`.

    A meter that raises must not kill the workload it measures: its error is kept in
    ``errors`` (the window's values are then null with that reason) and the load goes on.
    ``abandon()`` cancels whatever an exception left open::

        wins = LiveWindows(ctx, gpus=[0, 1])
        tracker = SteadyTracker(..., on_open=lambda t: wins.begin("steady", t), on_close=lambda t: wins.end("steady", t))
    """

    def __init__(self, ctx: Context, gpus: list[int] | None = None) -> None:
        self.ctx = ctx
        self.gpus = gpus
        self.closed: dict[str, Window] = {}
        self.errors: dict[str, str] = {}

    def begin(self, name: str, t: float | None = None) -> None:
        """Open ``name`` now or at ``t`` (a ``time.perf_counter()`` value)."""
        try:
            self.ctx.begin_window(name, t, gpus=self.gpus)
        except Exception as exc:
            self.errors[name] = f"{type(exc).__name__}: {exc}"

    def end(self, name: str, t: float | None = None) -> None:
        """Close ``name`` (a window that failed to open is ignored)."""
        if name not in self.ctx.open_windows():
            return
        w = self.closed[name] = self.ctx.end_window(name, t, raise_errors=False)
        if w.error is not None:
            self.errors[name] = w.error

    def abandon(self) -> None:
        """Cancel the windows an exception left open (their values are discarded)."""
        for name in self.ctx.open_windows():
            self.ctx.cancel_window(name)


def _each(fn: Any, items: list[Any]) -> None:
    """Call ``fn`` on every item even if some raise; the first error is re-raised at the end."""
    first: BaseException | None = None
    for item in items:
        try:
            fn(item)
        except Exception as exc:
            first = first or exc
    if first is not None:
        raise first


def _machine_state() -> dict[str, Any]:
    from charbench.envinfo import machine_state

    try:
        return machine_state()
    except Exception as exc:  # noqa: BLE001 - a /proc oddity must not fail a measured point
        return {"reasons": {k: f"machine state unreadable: {type(exc).__name__}: {exc}" for k in ("load1", "cpu_mhz", "process_threads")}}


def finalize_record(rec: Mapping[str, Any], params: dict[str, Any], key: str, index: int, *, simulated: bool = False,
                    machine: Record | None = None) -> dict[str, Any]:
    """Merge knob values and bookkeeping into a flat record; JSON-encode reasons and provenance.

    Args:
        rec: a :class:`~charbench.record.Record` or a plain dict of values.
        params: the point's knobs.
        key: the point key.
        index: the point's index in the sweep.
        simulated: the study measures nothing: every numeric value that is not a knob is
            stamped :data:`PROV_SIMULATED`, unless it already carries an estimated provenance.
        machine: the machine columns of the point (:func:`charbench.noise.point_machine`).

    Every None (and NaN/inf, turned into None) gets a reason in ``null_reasons``; a knob's
    ``+inf`` (serve-sweep's max-throughput ``request_rate_rps``) and a value set with
    ``allow_inf`` are kept as-is, so the knob keeps one value from CLI to report.
    """
    built = as_record(rec)
    if machine is not None:  # the study's own values win over the runner's machine columns
        built = Record().merge(machine).merge(built)
    out: dict[str, Any] = {"point_key": key, "point_index": index}
    out.update(params)
    reasons: dict[str, str] = dict(built.reasons)
    prov: dict[str, str] = dict(built.provenance)
    warns: list[str] = list(built.warnings)
    out.update(built.to_dict())
    out["point_key"], out["point_index"] = key, index  # resume relies on these: a record cannot change them
    for k, v in list(out.items()):
        if isinstance(v, float) and v == math.inf and (k in params or k in built.infinite_ok):
            continue
        if isinstance(v, float) and not math.isfinite(v):
            out[k] = None  # a NaN/inf measurement is not a value; a missing value is null with its reason
            reasons.setdefault(k, f"not a finite number ({v!r})")
        elif v is None and k not in reasons:
            reasons[k] = "not measured"
    if simulated:
        for k, v in out.items():
            if k in params or k in ("point_key", "point_index") or k in MACHINE_COLUMNS or isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if not is_estimated(prov.get(k)):
                prov[k] = PROV_SIMULATED
    out["null_reasons"] = json.dumps(reasons, sort_keys=True)
    out["provenance"] = json.dumps(prov, sort_keys=True)
    out["warnings"] = "; ".join(dict.fromkeys(warns))
    out["completed_at"] = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    return out


@dataclass
class RunResult:
    """What a study run produced."""

    run_dir: Path
    status: str
    points_done: int
    points_failed: int
    summary: dict[str, Any]
    report: Path | None


def _progress(total: int, enabled: bool, keys: list[str] | None = None) -> Any:
    from charbench.progress import Progress

    return Progress(total, enabled=enabled, keys=keys)


def run_study(study: Study, common: CommonOptions, settings: RunSettings, argv: list[str] | None = None, executor: Any = None) -> RunResult:
    """Run every point of ``study`` into a run folder and render its report.

    A failure mid-sweep keeps every completed point; Ctrl-C or SIGTERM marks the run
    interrupted (``--resume`` continues it); clocks and power limits are restored on every
    exit path. The run folder is locked for the whole run, so a second ``--resume`` of it
    is refused instead of timing the same points at the same time.

    ``executor`` (a :class:`charbench.executors.Executor`, see ``--executor``) runs the resource
    groups on other processes or nodes; the run folder is still written here only. None runs
    them in this process.

    Raises:
        CharbenchError: a point failed without ``--continue-on-error``; ``--resume`` of a
            run made with another config, without a config.json, or in use by another process.
        KeyboardInterrupt: after the run folder was marked ``interrupted``
            (:class:`charbench.signals.Terminated` for SIGTERM).
    """
    from charbench.device import resolve_device
    from charbench.sweep import order_points

    device = resolve_device(common.device)
    _check_settings(study, settings)
    all_points = study.points()
    ordered = order_points(all_points, shuffle=settings.shuffle, seed=common.seed)
    keyed = group_points([(point_key(p), p) for p in ordered], study.resource_knobs)
    counts = collections.Counter(k for k, _ in keyed)
    dupes = sorted(k for k, c in counts.items() if c > 1)
    if dupes:
        raise ConfigError(f"{study.name}: two sweep points share the key {dupes[0]!r}; make the knob values distinct")
    # SIGTERM (a batch scheduler's stop) takes Ctrl-C's path: the run is marked interrupted.
    log = _Logger(quiet=common.json)
    if executor is not None:
        executor.check(study)  # refused before a run folder exists: e.g. an ordered study off this machine
    # SIGTERM (a batch scheduler's stop) takes Ctrl-C's path: the run is marked interrupted.
    with sigterm_as_interrupt(), contextlib.ExitStack() as held:
        prepared = _prepare(study, log)  # before the run folder, meters, sampler and idle baseline
        store, done = _open_run(study, common, settings, device, argv, held, prepared)
        return _sweep(study, store, done, keyed, common, settings, device, log, prepared, executor)


def _check_settings(study: Study, settings: RunSettings) -> None:
    """Refuse runner settings that contradict what the study declares."""
    if study.ordered and settings.shuffle:
        raise ConfigError(f"--shuffle: {study.name} runs its points in order (each continues the state of the one before); drop --shuffle")
    if not study.measures and settings.idle_baseline_s > 0:
        raise ConfigError(f"--idle-baseline: {study.name} measures nothing (its values are simulated); drop --idle-baseline")


def group_points(keyed: list[tuple[str, dict[str, Any]]], knobs: tuple[str, ...]) -> list[tuple[str, dict[str, Any]]]:
    """Reorder points so that each resource group is contiguous (groups in order of first appearance).

    Within a group, and across groups, the given order (sweep or shuffled) is kept.
    """
    if not knobs:
        return list(keyed)
    groups: dict[tuple[str, ...], list[tuple[str, dict[str, Any]]]] = {}
    for key, params in keyed:
        groups.setdefault(_group_id(params, knobs), []).append((key, params))
    return [item for members in groups.values() for item in members]


def _group_id(params: dict[str, Any], knobs: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(json.dumps(params.get(k), sort_keys=True, default=str) for k in knobs)


def _prepare(study: Study, log: Any) -> dict[str, Any] | None:
    """Run the study's prepare phase unless its cache already holds the result."""
    inputs = study.prepare_inputs()
    if inputs is None:
        return None
    from charbench.prepare_cache import PrepareCache

    entry = PrepareCache.for_study(study.name).entry(inputs, version=study.prepare_version)
    hit = entry.hit
    if hit:
        log(f"prepare: cache hit {entry.path}")
    else:
        log(f"prepare: building {entry.path}")
        t0 = time.perf_counter()
        with entry.building() as tmp:
            study.prepare(tmp, log)
        log(f"prepare: done in {time.perf_counter() - t0:.1f} s")
    return entry.record(hit)


def _open_run(study: Study, common: CommonOptions, settings: RunSettings, device: str, argv: list[str] | None,
              held: contextlib.ExitStack, prepared: dict[str, Any] | None = None) -> tuple[RunStore, set[str]]:
    """Create the run folder, or reopen the ``--resume`` one; either way lock it for this process (held until ``held`` closes).

    Raises:
        RunStoreError: the resume folder is locked by another process, or damaged.
        ConfigError: the resume folder was made with another config.
    """
    if common.resume is not None:
        store = RunStore.open(common.resume, study=study.name)
        held.enter_context(RunLock(store.path))  # before any write: another resume may be running it
        _check_resume_config(store, study, settings)
        done = store.completed_keys()  # the earlier samples stay on disk: this run appends its own after them
        store.update_meta(status="running", resumed=_dt.datetime.now().astimezone().isoformat(timespec="seconds"), **owner_fields())
    else:
        from charbench.envinfo import collect_env

        env = collect_env(argv=argv if argv is not None else sys.argv)
        env["device"] = device
        store = RunStore.create(
            common.out,
            study.name,
            label=common.label,
            config={"study": study.name, "common": to_jsonable(common), "settings": to_jsonable(settings), "study_config": study.config_dict(),
                    **({"prepare": prepared} if prepared is not None else {})},
            env=env,
            meta=common.meta,
            report_hook=study.report_hook,
        )
        held.enter_context(RunLock(store.path))
        done = set()
    return store, done


def _sweep(study: Study, store: RunStore, done: set[str], keyed: list[tuple[str, dict[str, Any]]],
           common: CommonOptions, settings: RunSettings, device: str, log: Any, prepared: dict[str, Any] | None = None,
           executor: Any = None) -> RunResult:
    """Run the points not in ``done`` group by group, finalize, mark the run and render its report.

    ``executor`` (see :mod:`charbench.executors`) runs the groups elsewhere; None runs them here.
    """
    todo = [(i, k, p) for i, (k, p) in enumerate(keyed) if k not in done]
    if study.ordered and done:
        _check_ordered_resume(store, keyed, done)
    store.update_meta(points_total=len(keyed), device=device)
    status = "failed"
    summary: dict[str, Any] = {}
    ctx: Context | None = None
    try:
        ctx = Context(device, store, common.seed, settings, log, gpus=study.gpus(device), measures=study.measures)
        ctx.cache_dir = Path(prepared["path"]) if prepared else None
        for note in ctx.meter_notes:
            log(f"note: {note}")
        if done:
            log(f"resuming {store.path}: {len(done)} point(s) done, {len(todo)} to run")
        remote = executor is not None and not executor.runs_here
        if study.measures and not remote:  # a remote node measures itself (its own sampler and baseline)
            _start_measurement(ctx, settings, log)
        if not remote:
            study.setup(ctx)
        with _progress(len(todo), enabled=not common.json, keys=[k for _, k, _ in todo]) as bar:
            groups = _groups(todo, study.resource_knobs)
            if executor is None:
                run_groups_here(study, ctx, store, common, groups, log, bar)
            else:
                executor.run(study, ctx, store, common, groups, log, bar)
        summary = study.finalize(store, ctx) or {}
        status = "completed"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        _close_run(study, ctx, store, status, log)
    report = None
    try:
        from charbench.report import render_run

        report = render_run(store.path)
    except Exception as exc:  # a report failure must not lose a completed run
        if os.environ.get("CHARBENCH_DEBUG") == "1":
            raise
        log.error(f"report rendering failed: {type(exc).__name__}: {exc}; rerun `charbench report {store.path}`")
    return RunResult(store.path, status, store.meta["points_done"], store.meta["points_failed"], summary, report)


Todo = list[tuple[int, str, dict[str, Any]]]


def run_groups_here(study: Study, ctx: Context, store: Any, common: CommonOptions, groups: list[tuple[dict[str, Any], Todo]], log: Any,
                    bar: Any = None) -> None:
    """Run resource groups in this process, one after the other, with ``--cooldown`` between points.

    The local executor's loop, and a remote worker's (with a staging store): both run exactly this.
    """
    left = sum(len(m) for _, m in groups)
    for group, members in groups:
        def after(key: str) -> None:
            nonlocal left
            left -= 1
            if bar is not None:
                bar.advance()
            if left > 0:
                ctx.cooldown()

        acquired = run_group(study, ctx, store, common, group, members, log, after_point=after, describe=getattr(bar, "describe", None))
        if not acquired:
            for _ in members:
                if bar is not None:
                    bar.advance()
            left -= len(members)


def run_group(study: Study, ctx: Context, store: Any, common: CommonOptions, group: dict[str, Any], members: Todo, log: Any,
              after_point: Callable[[str], None] | None = None, describe: Callable[[str], None] | None = None) -> bool:
    """Acquire one resource group, run its points into ``store``, release it; returns whether it was acquired.

    Raises:
        CharbenchError: a point (or the group's resource) failed without ``--continue-on-error``.
    """
    with _resource_group(study, ctx, store, common, group, members, log) as acquired:
        for index, key, params in members if acquired else []:
            if describe is not None:
                describe(key)
            _run_one(study, ctx, store, common, index, key, params, log)
            if after_point is not None:
                after_point(key)
    return acquired


def _groups(todo: Todo, knobs: tuple[str, ...]) -> list[tuple[dict[str, Any], Todo]]:
    """Consecutive runs of points sharing their resource knobs (``todo`` is already grouped)."""
    out: list[tuple[dict[str, Any], Todo]] = []
    last: tuple[str, ...] | None = None
    for item in todo:
        gid = _group_id(item[2], knobs)
        if not out or gid != last:
            out.append(({k: item[2].get(k) for k in knobs}, []))
            last = gid
        out[-1][1].append(item)
    return out


@contextlib.contextmanager
def _resource_group(study: Study, ctx: Context, store: RunStore, common: CommonOptions, group: dict[str, Any], members: Todo,
                    log: Any) -> Iterator[bool]:
    """Acquire a group's resource, yield whether it was acquired, release it on every exit path.

    A group whose resource cannot be acquired fails each of its points (``failures/``); the
    run goes on to the next group only under ``--continue-on-error``.
    """
    try:
        ctx.resource = study.acquire(dict(group), ctx)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:
        label = ", ".join(f"{k}={v}" for k, v in group.items()) or "the run"
        for _, key, params in members:
            store.record_failure(key, exc, params)
        log.error(f"resource for {label} failed: {type(exc).__name__}: {exc}")
        if not common.continue_on_error or study.ordered:
            raise CharbenchError(
                f"the resource for {label} could not be acquired ({type(exc).__name__}: {exc}); completed points are kept in "
                f"{store.path}. Rerun with --continue-on-error to go on with the other groups, or --resume {store.path} after fixing it"
            ) from exc
        yield False
        return

    def reacquire() -> Any:
        old, ctx.resource = ctx.resource, None
        study.release(old, ctx)
        return study.acquire(dict(group), ctx)

    ctx._reacquire = reacquire
    try:
        yield True
    finally:
        resource, ctx.resource, ctx._reacquire = ctx.resource, None, None
        if resource is not None:
            study.release(resource, ctx)


def _check_ordered_resume(store: RunStore, keyed: list[tuple[str, dict[str, Any]]], done: set[str]) -> None:
    """An ordered study resumes after its last completed point: the done points must be a prefix, the checkpoint theirs."""
    order = [k for k, _ in keyed]
    prefix = order[: len(done)]
    if set(prefix) != done:
        raise RunStoreError(f"--resume {store.path}: the completed points are not the first {len(done)} of this ordered sweep; start a new run")
    saved = store.checkpoint_key()
    if saved is not None and saved != prefix[-1]:
        raise RunStoreError(
            f"--resume {store.path}: the checkpoint was taken after {saved!r}, not after the last completed point {prefix[-1]!r}; "
            "the run folder is damaged (start a new run)"
        )


def _run_one(study: Study, ctx: Context, store: RunStore, common: CommonOptions, index: int, key: str, params: dict[str, Any],
             log: Any) -> None:
    """Run one point and store its record(s) or its failure."""
    try:
        ctx._checkpoint = None
        before = _machine_state()
        out = study.run_point(dict(params), ctx)
        machine = point_machine(before, _machine_state())  # every record says how loaded the machine was (charbench.noise)
        recs = out if isinstance(out, list) else [out]
        if not recs or not all(isinstance(r, Mapping) for r in recs):
            raise TypeError(f"{type(study).__name__}.run_point must return a Record/dict or a non-empty list of them, got {type(out).__name__}")
        store.append_records([finalize_record(r, params, key, index, simulated=not study.measures, machine=machine) for r in recs])
        if ctx._checkpoint is not None:  # only now: a checkpoint never runs ahead of the stored results
            store.write_checkpoint(ctx._checkpoint, key)
            ctx._checkpoint = None
        store.clear_failure(key)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:
        store.record_failure(key, exc, params)
        log.error(f"point {key} failed: {type(exc).__name__}: {exc}")
        if study.ordered:
            raise CharbenchError(
                f"point {key} failed ({type(exc).__name__}: {exc}); {study.name} runs its points in order, so the run stops here "
                f"(even with --continue-on-error). Completed points are kept in {store.path}; --resume {store.path} after fixing it"
            ) from exc
        if not common.continue_on_error:
            raise CharbenchError(
                f"point {key} failed ({type(exc).__name__}: {exc}); completed points are kept in {store.path}. "
                f"Rerun with --continue-on-error to go on past failures, or --resume {store.path} after fixing it"
            ) from exc
    finally:
        if ctx.sampler is not None:
            _save_new_samples(ctx, store, ctx.sampler.rows())


def _save_new_samples(ctx: Context, store: RunStore, rows: list[dict[str, Any]]) -> None:
    """Append the sampler rows not stored yet (O(new rows) per point, not O(timeline))."""
    # A sampler that was cleared starts over: all its rows are new.
    new = rows[ctx.samples_stored:] if len(rows) >= ctx.samples_stored else rows
    store.append_samples(new)
    ctx.samples_stored = len(rows)


def _close_run(study: Study, ctx: Context | None, store: RunStore, status: str, log: Any) -> None:
    """Teardown, restore the device, save samples and baseline, and mark the run; each step runs even if one fails."""
    try:
        if ctx is not None:
            try:
                study.teardown(ctx)
            finally:
                ctx.close()
    finally:
        try:
            if ctx is not None and ctx.sample_rows:
                _save_new_samples(ctx, store, ctx.sample_rows)
            if ctx is not None and ctx.baseline is not None:
                store.write_json("baseline.json", to_jsonable(ctx.baseline))
        finally:
            store.finish(status)


def _check_resume_config(store: RunStore, study: Study, settings: RunSettings) -> None:
    """``--resume`` must continue the same sweep: the study config and runner settings have to match the run's saved ones.

    Only the settings the run saved are compared (a folder from before settings were saved has none).

    Raises:
        RunStoreError: config.json is missing or unreadable (nothing to compare with).
        ConfigError: the configs or settings differ (the message names the keys).
    """
    saved_all = store.resume_config()
    saved = saved_all["study_config"]
    keys = [k for k in differing_keys(saved, study.config_dict()) if k not in study.derived_config_keys]
    if keys:
        raise ConfigError(
            f"--resume {store.path}: the run was made with another {study.name} config (differs in: {', '.join(keys)}); "
            f"repeat the original options (see {store.path / 'config.json'}) or start a new run without --resume"
        )
    saved_settings = saved_all.get("settings") if isinstance(saved_all.get("settings"), dict) else {}
    now = to_jsonable(settings)
    keys = [k for k in differing_keys(saved_settings, now) if k in saved_settings]
    if keys:
        raise ConfigError(
            f"--resume {store.path}: the run was made with other runner settings (differs in: {', '.join(keys)}); "
            f"run it with the saved ones (see {store.path / 'config.json'}) or start a new run without --resume"
        )


def differing_keys(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Keys whose values differ between a saved config and ``current`` (compared as JSON, as config.json holds them)."""
    now = json.loads(json.dumps(current, default=str))
    return sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))


def _start_measurement(ctx: Context, settings: RunSettings, log: Any) -> None:
    from charbench.measure import Sampler, measure_idle_baseline

    if settings.idle_baseline_s > 0:
        log(f"measuring idle baseline for {settings.idle_baseline_s:g} s")
        ctx.baseline = measure_idle_baseline(ctx.meter, settings.idle_baseline_s)
    if settings.sample_interval_s > 0:
        ctx.sampler = Sampler(interval_s=settings.sample_interval_s, gpus=ctx.gpus or None)
        ctx.sampler.start()


class _Logger:
    """Plain log lines on stderr (stdout is kept for --json).

    ``quiet`` (``--json``) drops progress and notes; :meth:`error` lines are always printed.
    """

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet

    def __call__(self, msg: str) -> None:
        if not self.quiet:
            self._print(msg)

    def error(self, msg: str) -> None:
        """A failure the user must see even under ``--json`` (a point, the report)."""
        self._print(msg)

    @staticmethod
    def _print(msg: str) -> None:
        print(f"[charbench] {msg}", file=sys.stderr, flush=True)
