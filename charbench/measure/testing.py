"""Fakes for testing code that measures: NVML, clocks, a powercap tree, a meter.

Any test in the project can use these instead of hardware::

    from charbench.measure.testing import FakeClock, FakeGpu, FakeMeter, FakePowercap, fake_nvml

    with fake_nvml([FakeGpu(energy_mj=[1000, 3000])]) as nv:   # nv: the autospecced pynvml
        meter = NvmlMeter(clock=iter([10.0, 12.0]).__next__)
        meter.begin_window("w"); m = meter.end_window("w")       # 2 J over 2 s
        nv.nvmlDeviceGetTotalEnergyConsumption.assert_called()

    with FakePowercap(tmp_path / "powercap") as pc:              # intel-rapl:0 package-0 + dram
        pc.add_standard()
        pc.set_energy("intel-rapl:0", 5_000_000)
        pc.deny("intel-rapl:0")                                   # reads raise PermissionError

The fake pynvml is a ``NonCallableMagicMock(spec=pynvml)`` whose NVML functions
are ``create_autospec`` copies of the real ones (so a wrong signature fails the
test) driven by :class:`FakeGpu` state; constants and ``NVMLError`` are the real ones.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable
from unittest import mock

from charbench.measure import nvml as nvml_module
from charbench.measure import rapl as rapl_module
from charbench.measure.meters import Measurement

# NVML return codes used by the fake (nvml.h)
ERR_INVALID_ARGUMENT = 2
ERR_NOT_SUPPORTED = 3
ERR_NO_PERMISSION = 4
ERR_NOT_FOUND = 6
ERR_DRIVER_NOT_LOADED = 9
ERR_LIBRARY_NOT_FOUND = 12
ERR_UNKNOWN = 999


@dataclass
class FakeGpu:
    """State of one fake GPU; the fake pynvml reads and writes it.

    ``energy_mj`` is the value of the total-energy counter: an int (constant), a
    list (each read takes the next value, the last one repeats) or a callable.
    :class:`~charbench.measure.meters.NvmlMeter` reads the counter once when it is
    created (its support probe), so a list needs that extra first value; a callable
    on a fake clock (``lambda: int(clock.now * 300_000)`` for 300 W) needs none.
    ``errors`` maps a pynvml function name to the NVML error code it raises.
    ``root=False`` makes every set/reset call fail with NO_PERMISSION.
    """

    name: str = "NVIDIA H100 80GB HBM3"
    uuid: str = "GPU-11111111-2222-3333-4444-555555555555"
    pci_bus_id: str = "00000000:18:00.0"
    arch: int = 9  # NVML_DEVICE_ARCH_HOPPER
    energy_mj: int | list[int] | Callable[[], int] = 1_000_000
    power_mw: int = 300_000
    instant_power_mw: int | None = 310_000  # None: the field is not supported
    sm_clock_mhz: int = 1980
    mem_clock_mhz: int = 2619
    max_sm_clock_mhz: int = 1980
    max_mem_clock_mhz: int = 2619
    temp_c: int = 45
    util_gpu_pct: int = 100
    util_mem_pct: int = 40
    throttle_mask: int = 0
    power_limit_mw: int = 700_000
    default_power_limit_mw: int = 700_000
    power_limit_range_mw: tuple[int, int] = (200_000, 700_000)
    enforced_power_limit_mw: int | None = None  # None: equals power_limit_mw
    supported_mem_clocks_mhz: list[int] = field(default_factory=lambda: [2619])
    supported_sm_clocks_mhz: list[int] = field(default_factory=lambda: list(range(345, 1981, 15)))
    memory_total_bytes: int = 80 * 1024**3
    memory_free_bytes: int = 79 * 1024**3
    mig_mode: int | None = 0  # None: MIG not supported
    persistence_mode: int | None = 1
    mig_uuids: list[str] = field(default_factory=list)
    root: bool = True
    errors: dict[str, int] = field(default_factory=dict)
    locked_clocks_mhz: tuple[int, int] | None = None  # state written by the fake

    def next_energy_mj(self) -> int:
        """The counter's next reading."""
        value = self.energy_mj
        if callable(value):
            return int(value())
        if isinstance(value, list):
            return int(value.pop(0) if len(value) > 1 else value[0])
        return int(value)


@dataclass(frozen=True)
class _MigHandle:
    parent: FakeGpu
    uuid: str


def _fake_functions(nv: Any, gpus: list[FakeGpu], driver: str, init_error: int | None) -> dict[str, Callable]:
    real_error = nv.NVMLError

    def err(code: int) -> None:
        raise real_error(code)

    def check(gpu: Any, fn: str) -> FakeGpu:
        if not isinstance(gpu, FakeGpu):
            err(ERR_INVALID_ARGUMENT)
        if fn in gpu.errors:
            err(gpu.errors[fn])
        return gpu

    def privileged(gpu: Any, fn: str) -> FakeGpu:
        g = check(gpu, fn)
        if not g.root:
            err(ERR_NO_PERMISSION)
        return g

    def init() -> None:
        if init_error is not None:
            err(init_error)

    def by_index(i: int) -> FakeGpu:
        if not 0 <= i < len(gpus):
            err(ERR_INVALID_ARGUMENT)
        return gpus[i]

    def by_uuid(uuid: str) -> Any:
        for g in gpus:
            if g.uuid == uuid:
                return g
            if uuid in g.mig_uuids:
                return _MigHandle(g, uuid)
        err(ERR_NOT_FOUND)

    def mig_parent(handle: Any) -> FakeGpu:
        if not isinstance(handle, _MigHandle):
            err(ERR_INVALID_ARGUMENT)
        return handle.parent

    def field_values(gpu: Any, ids: list[int]) -> Any:
        g = check(gpu, "nvmlDeviceGetFieldValues")
        values = (nv.c_nvmlFieldValue_t * len(ids))()
        for k, fid in enumerate(ids):
            values[k].fieldId = fid
            if fid == nv.NVML_FI_DEV_POWER_INSTANT and g.instant_power_mw is not None:
                values[k].valueType = nv.NVML_VALUE_TYPE_UNSIGNED_INT
                values[k].value.uiVal = g.instant_power_mw
                values[k].nvmlReturn = 0
            else:
                values[k].nvmlReturn = ERR_NOT_SUPPORTED
        return values

    def energy(gpu: Any) -> int:
        g = check(gpu, "nvmlDeviceGetTotalEnergyConsumption")
        if g.arch < 5:
            err(ERR_NOT_SUPPORTED)
        return g.next_energy_mj()

    def clock(gpu: Any, kind: int, fn: str = "nvmlDeviceGetClockInfo", top: bool = False) -> int:
        g = check(gpu, fn)
        if kind == nv.NVML_CLOCK_SM:
            return g.max_sm_clock_mhz if top else g.sm_clock_mhz
        if kind == nv.NVML_CLOCK_MEM:
            return g.max_mem_clock_mhz if top else g.mem_clock_mhz
        err(ERR_INVALID_ARGUMENT)

    def set_limit(gpu: Any, limit: int) -> None:
        g = privileged(gpu, "nvmlDeviceSetPowerManagementLimit")
        lo, hi = g.power_limit_range_mw
        if not lo <= limit <= hi:
            err(ERR_INVALID_ARGUMENT)
        g.power_limit_mw = limit

    def lock(gpu: Any, lo: int, hi: int) -> None:
        g = privileged(gpu, "nvmlDeviceSetGpuLockedClocks")
        if g.arch < 5:
            err(ERR_NOT_SUPPORTED)
        g.locked_clocks_mhz = (lo, hi)

    def reset(gpu: Any) -> None:
        privileged(gpu, "nvmlDeviceResetGpuLockedClocks").locked_clocks_mhz = None

    def optional(value: int | None) -> int:
        if value is None:
            err(ERR_NOT_SUPPORTED)
        return value  # type: ignore[return-value]

    def simple(fn: str, getter: Callable[[FakeGpu], Any]) -> Callable[..., Any]:
        def call(gpu: Any, *args: Any) -> Any:
            return getter(check(gpu, fn))
        return call

    return {
        "nvmlInit": init,
        "nvmlShutdown": lambda: None,
        "nvmlSystemGetDriverVersion": lambda: driver,
        "nvmlDeviceGetCount": lambda: len(gpus),
        "nvmlDeviceGetHandleByIndex": by_index,
        "nvmlDeviceGetHandleByUUID": by_uuid,
        "nvmlDeviceGetDeviceHandleFromMigDeviceHandle": mig_parent,
        "nvmlDeviceGetUUID": simple("nvmlDeviceGetUUID", lambda g: g.uuid),
        "nvmlDeviceGetName": simple("nvmlDeviceGetName", lambda g: g.name),
        "nvmlDeviceGetPciInfo": simple("nvmlDeviceGetPciInfo",
                                       lambda g: SimpleNamespace(busId=g.pci_bus_id.encode())),
        "nvmlDeviceGetArchitecture": simple("nvmlDeviceGetArchitecture", lambda g: g.arch),
        "nvmlDeviceGetTotalEnergyConsumption": energy,
        "nvmlDeviceGetFieldValues": field_values,
        "nvmlDeviceGetPowerUsage": simple("nvmlDeviceGetPowerUsage", lambda g: g.power_mw),
        "nvmlDeviceGetClockInfo": clock,
        "nvmlDeviceGetMaxClockInfo": lambda g, k: clock(g, k, "nvmlDeviceGetMaxClockInfo", True),
        "nvmlDeviceGetTemperature": simple("nvmlDeviceGetTemperature", lambda g: g.temp_c),
        "nvmlDeviceGetUtilizationRates": simple(
            "nvmlDeviceGetUtilizationRates", lambda g: SimpleNamespace(gpu=g.util_gpu_pct, memory=g.util_mem_pct)),
        "nvmlDeviceGetCurrentClocksEventReasons": simple(
            "nvmlDeviceGetCurrentClocksEventReasons", lambda g: g.throttle_mask),
        "nvmlDeviceGetCurrentClocksThrottleReasons": simple(
            "nvmlDeviceGetCurrentClocksThrottleReasons", lambda g: g.throttle_mask),
        "nvmlDeviceGetPowerManagementLimit": simple("nvmlDeviceGetPowerManagementLimit",
                                                    lambda g: g.power_limit_mw),
        "nvmlDeviceGetEnforcedPowerLimit": simple(
            "nvmlDeviceGetEnforcedPowerLimit",
            lambda g: g.power_limit_mw if g.enforced_power_limit_mw is None else g.enforced_power_limit_mw),
        "nvmlDeviceGetPowerManagementLimitConstraints": simple(
            "nvmlDeviceGetPowerManagementLimitConstraints", lambda g: list(g.power_limit_range_mw)),
        "nvmlDeviceGetPowerManagementDefaultLimit": simple(
            "nvmlDeviceGetPowerManagementDefaultLimit", lambda g: g.default_power_limit_mw),
        "nvmlDeviceSetPowerManagementLimit": set_limit,
        "nvmlDeviceSetGpuLockedClocks": lock,
        "nvmlDeviceResetGpuLockedClocks": reset,
        "nvmlDeviceGetSupportedMemoryClocks": simple("nvmlDeviceGetSupportedMemoryClocks",
                                                     lambda g: list(g.supported_mem_clocks_mhz)),
        "nvmlDeviceGetSupportedGraphicsClocks": simple("nvmlDeviceGetSupportedGraphicsClocks",
                                                       lambda g: list(g.supported_sm_clocks_mhz)),
        "nvmlDeviceGetMemoryInfo": simple(
            "nvmlDeviceGetMemoryInfo", lambda g: SimpleNamespace(
                total=g.memory_total_bytes, free=g.memory_free_bytes,
                used=g.memory_total_bytes - g.memory_free_bytes)),
        "nvmlDeviceGetMigMode": simple("nvmlDeviceGetMigMode", lambda g: [optional(g.mig_mode), optional(g.mig_mode)]),
        "nvmlDeviceGetPersistenceMode": simple("nvmlDeviceGetPersistenceMode",
                                               lambda g: optional(g.persistence_mode)),
    }


def make_fake_pynvml(gpus: list[FakeGpu], driver_version: str = "550.54.15",
                     init_error: int | None = None) -> Any:
    """Build an autospecced fake ``pynvml`` module backed by ``gpus``.

    Args:
        gpus: the fake GPUs, in NVML (PCI) order; they double as device handles.
        driver_version: what ``nvmlSystemGetDriverVersion`` returns.
        init_error: an NVML error code ``nvmlInit`` raises (e.g. 12, library not found).
    """
    real = nvml_module.import_pynvml()
    nv = mock.NonCallableMagicMock(spec=real, name="pynvml")
    for name in dir(real):  # real constants, exception classes and ctypes structures
        value = getattr(real, name)
        if isinstance(value, (int, str)) or (isinstance(value, type) and (
                issubclass(value, Exception) or issubclass(value, ctypes.Structure))):
            setattr(nv, name, value)
    for name, impl in _fake_functions(nv, gpus, driver_version, init_error).items():
        setattr(nv, name, mock.create_autospec(getattr(real, name), side_effect=impl))
    return nv


@contextmanager
def fake_nvml(gpus: list[FakeGpu] | None = None, driver_version: str = "550.54.15",
              init_error: int | None = None, missing: bool = False) -> Iterator[Any]:
    """Install a fake pynvml for the duration of the block and yield it.

    Args:
        gpus: fake GPUs (default: one :class:`FakeGpu`).
        driver_version: reported driver version.
        init_error: NVML error code raised by ``nvmlInit``.
        missing: simulate nvidia-ml-py not being installed at all.
    """
    if missing:
        from charbench.errors import NvmlNotAvailableError

        exc = NvmlNotAvailableError("nvidia-ml-py is not installed (No module named 'pynvml'); "
                                    "install it with `pip install nvidia-ml-py`")
        with mock.patch.object(nvml_module, "import_pynvml", autospec=True, side_effect=exc):
            yield None
        return
    nv = make_fake_pynvml([FakeGpu()] if gpus is None else gpus, driver_version, init_error)
    with mock.patch.object(nvml_module, "import_pynvml", autospec=True, return_value=nv):
        yield nv


class FakeClock:
    """A controllable clock: ``clock()`` returns ``now`` then adds ``step``.

    ``sleep(dt)`` and ``wait(dt)`` advance it; ``waiter(n)`` gives a ``wait``
    function for :class:`~charbench.measure.sampler.Sampler` that stops after ``n`` waits.
    """

    def __init__(self, start: float = 0.0, step: float = 0.0) -> None:
        self.now = float(start)
        self.step = float(step)

    def __call__(self) -> float:
        t = self.now
        self.now += self.step
        return t

    def advance(self, dt: float) -> None:
        """Move time forward by ``dt`` seconds."""
        self.now += dt

    def sleep(self, dt: float) -> None:
        """A ``time.sleep`` stand-in."""
        self.advance(dt)

    def waiter(self, stop_after: int) -> Callable[[float], bool]:
        """``wait(timeout)`` that advances time and asks to stop on the ``stop_after``-th call."""
        calls = 0

        def wait(timeout: float) -> bool:
            nonlocal calls
            calls += 1
            self.advance(max(0.0, timeout))
            return calls >= stop_after

        return wait


class FakePowercap:
    """A fake ``/sys/class/powercap`` tree; as a context manager it can deny reads.

    Folders are flat like the real class folder (``intel-rapl:0``, ``intel-rapl:0:0``).
    :meth:`deny` makes reads of a zone's ``energy_uj`` raise PermissionError even as
    root (chmod does not stop root), by patching the one reader in rapl.py.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._denied: set[Path] = set()
        self._patch: Any = None

    def add_zone(self, dirname: str, name: str, energy_uj: int = 0,
                 max_energy_range_uj: int | None = 262_143_328_850) -> Path:
        """Create a zone folder with ``name``, ``energy_uj`` and ``max_energy_range_uj``."""
        path = self.root / dirname
        path.mkdir(parents=True, exist_ok=True)
        (path / "name").write_text(name + "\n")
        (path / "energy_uj").write_text(f"{energy_uj}\n")
        if max_energy_range_uj is not None:
            (path / "max_energy_range_uj").write_text(f"{max_energy_range_uj}\n")
        return path

    def add_standard(self, packages: int = 1, dram: bool = True, core: bool = True,
                     uncore: bool = False, psys: bool = False) -> None:
        """A typical Intel layout: package-N with core (0), uncore (1), dram (2); psys last."""
        for k in range(packages):
            self.add_zone(f"intel-rapl:{k}", f"package-{k}", 1_000_000 * (k + 1))
            if core:
                self.add_zone(f"intel-rapl:{k}:0", "core", 500_000)
            if uncore:
                self.add_zone(f"intel-rapl:{k}:1", "uncore", 100_000)
            if dram:
                self.add_zone(f"intel-rapl:{k}:2", "dram", 200_000 * (k + 1))
        if psys:
            self.add_zone(f"intel-rapl:{packages}", "psys", 9_000_000)

    def set_energy(self, dirname: str, energy_uj: int) -> None:
        """Write a zone's ``energy_uj``."""
        (self.root / dirname / "energy_uj").write_text(f"{energy_uj}\n")

    def deny(self, dirname: str) -> None:
        """Make reading the zone's ``energy_uj`` raise PermissionError (needs the context)."""
        self._denied.add(self.root / dirname / "energy_uj")

    def __enter__(self) -> FakePowercap:
        real = rapl_module._read_text

        def read(path: Path) -> str:
            if Path(path) in self._denied:
                raise PermissionError(13, "Permission denied", str(path))
            return real(path)

        self._patch = mock.patch.object(rapl_module, "_read_text", side_effect=read, autospec=True)
        self._patch.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._patch.stop()


class FakeMeter:
    """A deterministic meter: each domain draws a constant power (None: not measured).

    Energy is ``power × window time`` on the given clock, provenance "fake", so tests
    of sweeps and records get exact numbers without hardware.
    """

    name = "fake"

    def __init__(self, power_w: dict[str, float | None], clock: Callable[[], float] = time.perf_counter) -> None:
        """Args: power_w: watts per domain; clock: time source (e.g. a FakeClock)."""
        self.power_w = dict(power_w)
        self._clock = clock
        self._open: dict[str, float] = {}
        self.available = True
        self.reason: str | None = None

    def domains(self) -> list[str]:
        """The configured domains."""
        return list(self.power_w)

    def begin_window(self, name: str) -> None:
        """Stamp the start."""
        self._open[name] = self._clock()

    def end_window(self, name: str) -> Measurement:
        """Energy = power × elapsed time for each domain."""
        t0 = self._open.pop(name)
        t1 = self._clock()
        dt = t1 - t0
        energy = {d: (p * dt if p is not None else None) for d, p in self.power_w.items()}
        prov = {d: ("fake" if p is not None else "not-measured") for d, p in self.power_w.items()}
        warnings = [f"{d}: not measured (fake)" for d, p in self.power_w.items() if p is None]
        return Measurement(name, dt, energy, {d: p for d, p in self.power_w.items()}, prov,
                           warnings, False, t0, t1)

    def close(self) -> None:
        """Nothing to release."""
