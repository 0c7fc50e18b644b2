"""The single boundary between charbench and NVML (nvidia-ml-py).

This is the only module that imports ``pynvml``, and it does so lazily inside
:func:`import_pynvml`, so importing charbench never fails on a machine without the
binding or the driver. Every NVML call goes through :meth:`Nvml._call`, which maps
``NVMLError`` return codes to the typed errors of :mod:`charbench.errors`.

Use::

    from charbench.measure.nvml import Nvml, nvml_available

    ok, reason = nvml_available()
    with Nvml() as nvml:
        for gpu in nvml.visible_gpus():          # honours CUDA_VISIBLE_DEVICES
            watts, kind = nvml.power_w(gpu)       # kind: "instant" | "average-1s"
            print(gpu.visible_index, gpu.name, nvml.total_energy_mj(gpu), watts, kind)
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable, TypeVar

from charbench.errors import (
    DeviceError,
    NvmlError,
    NvmlInvalidArgumentError,
    NvmlNoPermissionError,
    NvmlNotAvailableError,
    NvmlNotSupportedError,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

# NVML return codes (nvml.h); kept here so the mapping works without the binding.
_NVML_ERROR_UNINITIALIZED = 1
_NVML_ERROR_INVALID_ARGUMENT = 2
_NVML_ERROR_NOT_SUPPORTED = 3
_NVML_ERROR_NO_PERMISSION = 4
_NVML_ERROR_NOT_FOUND = 6
_NVML_ERROR_DRIVER_NOT_LOADED = 9
_NVML_ERROR_LIBRARY_NOT_FOUND = 12
_NVML_ERROR_FUNCTION_NOT_FOUND = 13
_NVML_ERROR_GPU_IS_LOST = 15
_NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18

_UNAVAILABLE_CODES = {
    _NVML_ERROR_UNINITIALIZED: "NVML is not initialized",
    _NVML_ERROR_DRIVER_NOT_LOADED: "the NVIDIA driver is not loaded",
    _NVML_ERROR_LIBRARY_NOT_FOUND: "libnvidia-ml.so.1 was not found (no NVIDIA driver installed?)",
    _NVML_ERROR_LIB_RM_VERSION_MISMATCH: (
        "the NVML library and the kernel driver versions differ (driver updated without reboot?)"
    ),
}

# Clock-event ("throttle") reason bits, nvml.h nvmlClocksEventReason*.
THROTTLE_REASONS: tuple[tuple[int, str], ...] = (
    (0x001, "GpuIdle"),
    (0x002, "ApplicationsClocksSetting"),
    (0x004, "SwPowerCap"),
    (0x008, "HwSlowdown"),
    (0x010, "SyncBoost"),
    (0x020, "SwThermalSlowdown"),
    (0x040, "HwThermalSlowdown"),
    (0x080, "HwPowerBrakeSlowdown"),
    (0x100, "DisplayClockSetting"),
    (0x200, "BoardLimit"),
    (0x400, "Reliability"),
)

# nvml.h NVML_DEVICE_ARCH_*.
ARCHITECTURES: dict[int, str] = {
    2: "kepler",
    3: "maxwell",
    4: "pascal",
    5: "volta",
    6: "turing",
    7: "ampere",
    8: "ada",
    9: "hopper",
    10: "blackwell",
    13: "rubin",
}
_ARCH_VOLTA = 5
_ARCH_AMPERE = 7

# Field ids (nvml.h); read from the binding when present, these are the fallbacks.
_FI_DEV_POWER_INSTANT = 186

_PERMISSION_FIX = (
    "run as root (e.g. `sudo -E $(which charbench) ...`; in a container add --cap-add SYS_ADMIN)"
)


def import_pynvml() -> ModuleType:
    """Import and return the ``pynvml`` module (nvidia-ml-py).

    Tests replace this function to install a fake NVML (see :mod:`charbench.measure.testing`).

    Raises:
        NvmlNotAvailableError: if nvidia-ml-py is not installed.
    """
    try:
        import pynvml  # noqa: PLC0415 - optional, imported lazily by design
    except ImportError as exc:  # pragma: no cover - the binding is a dependency
        raise NvmlNotAvailableError(
            f"nvidia-ml-py is not installed ({exc}); install it with `pip install nvidia-ml-py`"
        ) from exc
    return pynvml


REAL_IMPORT_PYNVML = import_pynvml  # tests replace import_pynvml; the sampler checks for that


def throttle_reason_names(mask: int) -> list[str]:
    """Names of the clock-event reason bits set in ``mask`` (unknown bits as hex)."""
    names = [name for bit, name in THROTTLE_REASONS if mask & bit]
    known = 0
    for bit, _ in THROTTLE_REASONS:
        known |= bit
    if mask & ~known:
        names.append(f"unknown(0x{mask & ~known:x})")
    return names


def normalize_pci_bus_id(bus_id: str) -> str:
    """Canonical PCI bus id ``dddd:bb:dd.f`` (lower case, 4-digit domain).

    NVML reports ``00000000:18:00.0`` and CUDA/torch ``0000:18:00.0``; both map to
    ``0000:18:00.0``. A missing domain (``18:00.0``) means domain 0.
    """
    text = bus_id.strip().lower()
    parts = text.split(":")
    if len(parts) == 2:
        parts = ["0", *parts]
    if len(parts) != 3 or "." not in parts[2]:
        raise ValueError(f"not a PCI bus id: {bus_id!r}")
    dev, func = parts[2].split(".", 1)
    return f"{int(parts[0], 16):04x}:{int(parts[1], 16):02x}:{int(dev, 16):02x}.{int(func, 16):x}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class GpuRef:
    """One GPU as the process sees it, with its NVML identity.

    Attributes:
        visible_index: index in this process's CUDA view (``cuda:<visible_index>``).
        nvml_index: NVML (PCI-ordered) index of the physical GPU.
        uuid: the physical GPU's UUID (``GPU-...``).
        pci_bus_id: canonical PCI bus id (``0000:18:00.0``).
        name: marketing name (``NVIDIA H100 80GB HBM3``).
        handle: the NVML device handle of the physical GPU (energy, power, clocks).
        mig_uuid: the MIG instance's UUID when CUDA_VISIBLE_DEVICES names one; NVML
            energy and power then cover the whole physical GPU.
    """

    visible_index: int
    nvml_index: int
    uuid: str
    pci_bus_id: str
    name: str
    handle: Any = field(compare=False, repr=False)
    mig_uuid: str | None = None


def nvml_available() -> tuple[bool, str]:
    """Probe NVML without raising.

    Returns:
        ``(True, "")`` when NVML initializes and lists at least zero devices, else
        ``(False, reason)`` with what is missing and how to fix it.
    """
    try:
        with Nvml() as nvml:
            nvml.device_count()
    except NvmlError as exc:
        return False, str(exc)
    except Exception as exc:  # noqa: BLE001 - a probe must never crash
        return False, f"NVML probe failed: {type(exc).__name__}: {exc}"
    return True, ""


class Nvml:
    """NVML session: init/shutdown (reference counted) and typed wrappers.

    Every wrapper takes a :class:`GpuRef` or a raw NVML handle. Units are in the
    method names (``_w``, ``_mj``, ``_mhz``, ``_c``, ``_pct``, ``_bytes``).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._refs = 0
        self._nv: ModuleType | None = None
        self._arch_cache: dict[int, int | None] = {}
        self._instant_ok: dict[int, bool] = {}
        self.notes: list[str] = []  # remarks about CUDA_VISIBLE_DEVICES mapping

    # -- lifetime ---------------------------------------------------------------------------
    def __enter__(self) -> Nvml:
        self.init()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    @property
    def initialized(self) -> bool:
        """Whether :meth:`init` has been called more often than :meth:`shutdown`."""
        return self._refs > 0

    def init(self) -> None:
        """Initialize NVML (first call) or add a reference.

        Raises:
            NvmlNotAvailableError: binding, library or driver missing.
            NvmlError: any other NVML failure.
        """
        with self._lock:
            if self._refs == 0:
                nv = import_pynvml()
                try:
                    nv.nvmlInit()
                except nv.NVMLError as exc:
                    raise _map_error(exc, "initializing NVML") from exc
                except OSError as exc:  # a broken libnvidia-ml.so
                    raise NvmlNotAvailableError(f"initializing NVML: {exc}") from exc
                self._nv = nv
            self._refs += 1

    def shutdown(self) -> None:
        """Drop a reference; the last one shuts NVML down. Errors are logged, not raised."""
        with self._lock:
            if self._refs == 0:
                return
            self._refs -= 1
            if self._refs == 0 and self._nv is not None:
                try:
                    self._nv.nvmlShutdown()
                except self._nv.NVMLError as exc:
                    log.warning("nvmlShutdown failed: %s", exc)
                self._nv = None
                self._arch_cache.clear()
                self._instant_ok.clear()

    @property
    def nv(self) -> ModuleType:
        """The initialized pynvml module.

        Raises:
            NvmlNotAvailableError: when :meth:`init` was not called.
        """
        if self._nv is None:
            raise NvmlNotAvailableError("NVML is not initialized; use `with Nvml() as nvml:`")
        return self._nv

    def _call(self, what: str, fn_name: str, *args: Any) -> Any:
        nv = self.nv
        fn = getattr(nv, fn_name, None)
        if fn is None:
            raise NvmlNotSupportedError(
                f"{what}: {fn_name} is not in this nvidia-ml-py version (upgrade nvidia-ml-py)",
                _NVML_ERROR_FUNCTION_NOT_FOUND,
            )
        try:
            return fn(*args)
        except nv.NVMLError as exc:
            raise _map_error(exc, what) from exc

    # -- devices ----------------------------------------------------------------------------
    def device_count(self) -> int:
        """Number of physical GPUs NVML sees (ignores CUDA_VISIBLE_DEVICES)."""
        return int(self._call("counting GPUs", "nvmlDeviceGetCount"))

    def _physical(self, index: int) -> GpuRef:
        handle = self._call(f"getting GPU {index}", "nvmlDeviceGetHandleByIndex", index)
        return self._ref(index, index, handle)

    def _ref(self, visible: int, nvml_index: int, handle: Any, mig_uuid: str | None = None) -> GpuRef:
        uuid = _text(self._call("reading the GPU UUID", "nvmlDeviceGetUUID", handle))
        pci = self._call("reading the PCI info", "nvmlDeviceGetPciInfo", handle)
        name = _text(self._call("reading the GPU name", "nvmlDeviceGetName", handle))
        return GpuRef(visible, nvml_index, uuid, normalize_pci_bus_id(_text(pci.busId)), name, handle, mig_uuid)

    def all_gpus(self) -> list[GpuRef]:
        """Every physical GPU in NVML order, ``visible_index == nvml_index``."""
        return [self._physical(i) for i in range(self.device_count())]

    def visible_gpus(self) -> list[GpuRef]:
        """The GPUs CUDA shows this process, in CUDA's order.

        ``CUDA_VISIBLE_DEVICES`` entries may be NVML indices, ``GPU-<uuid>`` (or a
        unique prefix), ``MIG-<uuid>`` / ``MIG-GPU-<uuid>/<gi>/<ci>`` or PCI bus ids.
        As CUDA does, enumeration stops at the first entry that names no device (so
        ``-1`` hides every GPU); ``""`` hides all. Why an entry was dropped is kept
        in :attr:`notes` and logged.
        """
        self.notes = []
        physical = self.all_gpus()
        env = os.environ.get("CUDA_VISIBLE_DEVICES")
        if env is None:
            self._note_order(physical)
            return physical
        chosen: list[GpuRef] = []
        seen: set[str] = set()
        for raw in env.split(","):
            entry = raw.strip()
            ref = self._resolve_entry(entry, physical, len(chosen))
            if ref is None:
                break
            key = ref.mig_uuid or ref.uuid
            if key in seen:
                self._note(
                    f"CUDA_VISIBLE_DEVICES entry '{entry}' repeats a GPU already listed; "
                    "ignoring it and the entries after it"
                )
                break
            seen.add(key)
            chosen.append(ref)
        self._note_order(chosen)
        return chosen

    def _note(self, message: str) -> None:
        self.notes.append(message)
        log.warning(message)

    def _note_order(self, gpus: list[GpuRef]) -> None:
        if len({g.name for g in gpus}) > 1 and os.environ.get("CUDA_DEVICE_ORDER") != "PCI_BUS_ID":
            self._note(
                "GPUs of different models with CUDA_DEVICE_ORDER unset: CUDA's default "
                "FASTEST_FIRST order may differ from NVML's PCI order; "
                "set CUDA_DEVICE_ORDER=PCI_BUS_ID"
            )

    def _resolve_entry(self, entry: str, physical: list[GpuRef], visible: int) -> GpuRef | None:
        def bad(why: str) -> None:
            self._note(f"CUDA_VISIBLE_DEVICES entry '{entry}' {why}; ignoring it and the entries after it")

        if entry == "":
            if visible == 0 and os.environ.get("CUDA_VISIBLE_DEVICES", "").strip() == "":
                self._note("CUDA_VISIBLE_DEVICES is set but empty; no GPU is visible")
            else:
                bad("is empty")
            return None
        if entry.lstrip("+-").isdigit():
            idx = int(entry)
            if 0 <= idx < len(physical):
                return _replace_visible(physical[idx], visible)
            bad(f"is not a GPU index (NVML sees {len(physical)} GPU(s))")
            return None
        low = entry.lower()
        if low.startswith("mig-"):
            return self._resolve_mig(entry, physical, visible, bad)
        if low.startswith("gpu-"):
            hits = [g for g in physical if g.uuid.lower().startswith(low)]
            if len(hits) == 1:
                return _replace_visible(hits[0], visible)
            bad("matches no GPU UUID" if not hits else "is an ambiguous UUID prefix")
            return None
        try:
            bus = normalize_pci_bus_id(entry)
        except ValueError:
            bad("is not an index, a GPU-/MIG- UUID or a PCI bus id")
            return None
        hits = [g for g in physical if g.pci_bus_id == bus]
        if hits:
            return _replace_visible(hits[0], visible)
        bad("matches no GPU PCI bus id")
        return None

    def _resolve_mig(
        self, entry: str, physical: list[GpuRef], visible: int, bad: Callable[[str], None]
    ) -> GpuRef | None:
        if entry.lower().startswith("mig-gpu-"):
            # legacy form MIG-GPU-<gpu uuid>/<gi>/<ci>: the parent is named directly
            parent_uuid = entry[4:].split("/", 1)[0].lower()
            hits = [g for g in physical if g.uuid.lower() == parent_uuid]
            if not hits:
                bad("names a MIG instance of no listed GPU")
                return None
            parent = hits[0]
        else:
            try:
                mig = self._call("finding a MIG device", "nvmlDeviceGetHandleByUUID", entry)
                handle = self._call(
                    "finding a MIG device's parent", "nvmlDeviceGetDeviceHandleFromMigDeviceHandle", mig
                )
            except NvmlError:
                bad("matches no MIG device")
                return None
            uuid = _text(self._call("reading the GPU UUID", "nvmlDeviceGetUUID", handle))
            hits = [g for g in physical if g.uuid == uuid]
            if not hits:
                bad("names a MIG instance of no listed GPU")
                return None
            parent = hits[0]
        self._note(
            f"CUDA_VISIBLE_DEVICES entry '{entry}' is a MIG instance; NVML energy and power "
            f"cover the whole GPU {parent.uuid}"
        )
        return GpuRef(visible, parent.nvml_index, parent.uuid, parent.pci_bus_id, parent.name,
                      parent.handle, entry)

    def gpu_by_pci_bus_id(self, bus_id: str) -> GpuRef:
        """The physical GPU at a PCI bus id (e.g. ``torch.cuda.get_device_properties(i).pci_bus_id``).

        Raises:
            DeviceError: when no GPU has that bus id.
        """
        want = normalize_pci_bus_id(bus_id)
        for gpu in self.all_gpus():
            if gpu.pci_bus_id == want:
                return gpu
        raise DeviceError(f"no GPU at PCI bus id {bus_id} (NVML sees {self.device_count()} GPU(s))")

    # -- readings ---------------------------------------------------------------------------
    def total_energy_mj(self, gpu: GpuRef | Any) -> int:
        """Energy since the driver loaded, in mJ (Volta and newer)."""
        return int(self._call("reading the energy counter", "nvmlDeviceGetTotalEnergyConsumption", _h(gpu)))

    def power_w(self, gpu: GpuRef | Any, instant: bool = True) -> tuple[float, str]:
        """Board power in W and its kind.

        With ``instant`` the NVML_FI_DEV_POWER_INSTANT field is read where the driver
        exposes it; otherwise ``nvmlDeviceGetPowerUsage``, which on Ampere and newer
        (except GA100) is a 1 s average ("average-1s") and instantaneous before.

        Returns:
            ``(watts, kind)`` with kind ``"instant"`` or ``"average-1s"``.
        """
        handle = _h(gpu)
        key = _handle_key(handle)
        if instant and self._instant_ok.get(key, True):
            watts = self._instant_power_w(handle)
            self._instant_ok[key] = watts is not None
            if watts is not None:
                return watts, "instant"
        mw = self._call("reading power", "nvmlDeviceGetPowerUsage", handle)
        return mw / 1000.0, self._power_usage_kind(handle)

    def _instant_power_w(self, handle: Any) -> float | None:
        nv = self.nv
        field_id = getattr(nv, "NVML_FI_DEV_POWER_INSTANT", _FI_DEV_POWER_INSTANT)
        try:
            values = nv.nvmlDeviceGetFieldValues(handle, [field_id])
        except nv.NVMLError:
            return None
        value = values[0]
        if value.nvmlReturn != 0:
            return None
        return _field_number(value) / 1000.0  # mW -> W

    def _power_usage_kind(self, handle: Any) -> str:
        arch = self._arch_code(handle)
        if arch is not None and arch < _ARCH_AMPERE:
            return "instant"
        if arch == _ARCH_AMPERE:
            name = _text(self._call("reading the GPU name", "nvmlDeviceGetName", handle))
            if any(tag in name for tag in ("A100", "A30", "A800")):  # GA100 parts
                return "instant"
        return "average-1s"

    def _arch_code(self, handle: Any) -> int | None:
        key = _handle_key(handle)
        if key not in self._arch_cache:
            try:
                self._arch_cache[key] = int(
                    self._call("reading the architecture", "nvmlDeviceGetArchitecture", handle)
                )
            except NvmlError:
                self._arch_cache[key] = None
        return self._arch_cache[key]

    def clocks_mhz(self, gpu: GpuRef | Any) -> tuple[int, int]:
        """Current ``(sm, memory)`` clocks in MHz."""
        nv, h = self.nv, _h(gpu)
        sm = self._call("reading the SM clock", "nvmlDeviceGetClockInfo", h, nv.NVML_CLOCK_SM)
        mem = self._call("reading the memory clock", "nvmlDeviceGetClockInfo", h, nv.NVML_CLOCK_MEM)
        return int(sm), int(mem)

    def max_clocks_mhz(self, gpu: GpuRef | Any) -> tuple[int, int]:
        """Maximum ``(sm, memory)`` clocks in MHz."""
        nv, h = self.nv, _h(gpu)
        sm = self._call("reading the max SM clock", "nvmlDeviceGetMaxClockInfo", h, nv.NVML_CLOCK_SM)
        mem = self._call("reading the max memory clock", "nvmlDeviceGetMaxClockInfo", h, nv.NVML_CLOCK_MEM)
        return int(sm), int(mem)

    def temperature_c(self, gpu: GpuRef | Any) -> int:
        """GPU core temperature in °C."""
        nv = self.nv
        return int(self._call("reading the temperature", "nvmlDeviceGetTemperature", _h(gpu),
                              nv.NVML_TEMPERATURE_GPU))

    def utilization_pct(self, gpu: GpuRef | Any) -> tuple[int, int]:
        """``(gpu, memory)`` utilization in percent over the driver's last sample period."""
        rates = self._call("reading utilization", "nvmlDeviceGetUtilizationRates", _h(gpu))
        return int(rates.gpu), int(rates.memory)

    def throttle_reasons(self, gpu: GpuRef | Any) -> tuple[int, list[str]]:
        """Current clock-event (throttle) reasons as ``(mask, names)``."""
        h = _h(gpu)
        try:
            mask = self._call("reading clock-event reasons", "nvmlDeviceGetCurrentClocksEventReasons", h)
        except NvmlNotSupportedError as exc:
            if exc.code != _NVML_ERROR_FUNCTION_NOT_FOUND:
                raise
            # drivers older than R535 only have the deprecated name
            mask = self._call("reading throttle reasons", "nvmlDeviceGetCurrentClocksThrottleReasons", h)
        mask = int(mask)
        return mask, throttle_reason_names(mask)

    def power_limit_w(self, gpu: GpuRef | Any) -> float:
        """The configured power-management limit in W."""
        return self._call("reading the power limit", "nvmlDeviceGetPowerManagementLimit", _h(gpu)) / 1000.0

    def enforced_power_limit_w(self, gpu: GpuRef | Any) -> float:
        """The power limit the GPU actually enforces, in W (the minimum of all limits)."""
        return self._call("reading the enforced power limit", "nvmlDeviceGetEnforcedPowerLimit", _h(gpu)) / 1000.0

    def power_limit_constraints_w(self, gpu: GpuRef | Any) -> tuple[float, float]:
        """Allowed ``(min, max)`` power limit in W."""
        lo, hi = self._call(
            "reading the power-limit range", "nvmlDeviceGetPowerManagementLimitConstraints", _h(gpu)
        )
        return lo / 1000.0, hi / 1000.0

    def default_power_limit_w(self, gpu: GpuRef | Any) -> float:
        """The default (board) power limit in W."""
        return self._call(
            "reading the default power limit", "nvmlDeviceGetPowerManagementDefaultLimit", _h(gpu)
        ) / 1000.0

    def set_power_limit_w(self, gpu: GpuRef | Any, watts: float) -> None:
        """Set the power-management limit (needs root).

        Raises:
            NvmlNoPermissionError: without root, with the fix in the message.
            NvmlInvalidArgumentError: outside :meth:`power_limit_constraints_w`.
        """
        self._call(f"setting the power limit to {watts:g} W", "nvmlDeviceSetPowerManagementLimit",
                   _h(gpu), int(round(watts * 1000)))

    def set_locked_clocks(self, gpu: GpuRef | Any, min_mhz: int, max_mhz: int) -> None:
        """Lock the SM clock to ``[min_mhz, max_mhz]`` (Volta+, needs root)."""
        self._call(f"locking SM clocks to {min_mhz}-{max_mhz} MHz", "nvmlDeviceSetGpuLockedClocks",
                   _h(gpu), int(min_mhz), int(max_mhz))

    def reset_locked_clocks(self, gpu: GpuRef | Any) -> None:
        """Undo :meth:`set_locked_clocks` (needs root)."""
        self._call("resetting locked SM clocks", "nvmlDeviceResetGpuLockedClocks", _h(gpu))

    def supported_sm_clocks_mhz(self, gpu: GpuRef | Any) -> list[int]:
        """Supported SM clocks in MHz (ascending) at the highest memory clock."""
        h = _h(gpu)
        mems = self._call("listing memory clocks", "nvmlDeviceGetSupportedMemoryClocks", h)
        if not mems:
            return []
        sms = self._call("listing SM clocks", "nvmlDeviceGetSupportedGraphicsClocks", h, max(mems))
        return sorted(int(c) for c in sms)

    def memory_info_bytes(self, gpu: GpuRef | Any) -> tuple[int, int]:
        """Device memory ``(total, free)`` in bytes."""
        info = self._call("reading memory info", "nvmlDeviceGetMemoryInfo", _h(gpu))
        return int(info.total), int(info.free)

    def driver_version(self) -> str:
        """The NVIDIA driver version string (``550.54.15``)."""
        return _text(self._call("reading the driver version", "nvmlSystemGetDriverVersion"))

    def architecture(self, gpu: GpuRef | Any) -> str | None:
        """Architecture name (``"hopper"``) or None when NVML cannot tell."""
        code = self._arch_code(_h(gpu))
        return None if code is None else ARCHITECTURES.get(code)

    def energy_counter_supported(self, gpu: GpuRef | Any) -> bool:
        """Whether the total-energy counter works (Volta+ and readable here)."""
        h = _h(gpu)
        arch = self._arch_code(h)
        if arch is not None and arch < _ARCH_VOLTA:
            return False
        try:
            self.total_energy_mj(h)
        except (NvmlNotSupportedError, NvmlNoPermissionError):
            return False
        return True

    def mig_mode(self, gpu: GpuRef | Any) -> str | None:
        """``"enabled"``/``"disabled"`` (current MIG mode), None when unsupported."""
        try:
            current, _pending = self._call("reading the MIG mode", "nvmlDeviceGetMigMode", _h(gpu))
        except NvmlNotSupportedError:
            return None
        return "enabled" if current else "disabled"

    def persistence_mode(self, gpu: GpuRef | Any) -> bool | None:
        """Whether persistence mode is on, None when unsupported."""
        try:
            return bool(self._call("reading persistence mode", "nvmlDeviceGetPersistenceMode", _h(gpu)))
        except NvmlNotSupportedError:
            return None


def _h(gpu: GpuRef | Any) -> Any:
    return gpu.handle if isinstance(gpu, GpuRef) else gpu


def _handle_key(handle: Any) -> int:
    """A stable key for an NVML handle: its device pointer (a new Python object wraps the
    same device on every lookup, and ``id()`` of a dead object can be reused)."""
    try:
        return int(ctypes.cast(handle, ctypes.c_void_p).value or 0) or id(handle)
    except (TypeError, ctypes.ArgumentError):
        return id(handle)


def _replace_visible(ref: GpuRef, visible: int) -> GpuRef:
    return GpuRef(visible, ref.nvml_index, ref.uuid, ref.pci_bus_id, ref.name, ref.handle, ref.mig_uuid)


def _field_number(value: Any) -> float:
    # nvmlValueType_t: 0 double, 1 uint, 2 ulong, 3 ulonglong, 4 sll, 5 sint, 6 ushort
    member = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal", 6: "usVal"}
    return float(getattr(value.value, member.get(int(value.valueType), "uiVal")))


def _map_error(exc: Exception, what: str) -> NvmlError:
    """Map a pynvml ``NVMLError`` to the charbench error for its return code."""
    code = getattr(exc, "value", None)
    detail = f"{what}: {exc} (NVML error {code})"
    if code == _NVML_ERROR_NO_PERMISSION:
        return NvmlNoPermissionError(f"{what}: insufficient permissions (NVML error 4); {_PERMISSION_FIX}", code)
    if code in (_NVML_ERROR_NOT_SUPPORTED, _NVML_ERROR_FUNCTION_NOT_FOUND):
        kind = "not supported on this GPU" if code == _NVML_ERROR_NOT_SUPPORTED else "not in this driver"
        return NvmlNotSupportedError(f"{what}: {kind} (NVML error {code})", code)
    if code == _NVML_ERROR_INVALID_ARGUMENT:
        return NvmlInvalidArgumentError(f"{what}: invalid argument (NVML error 2)", code)
    if code in _UNAVAILABLE_CODES:
        return NvmlNotAvailableError(f"{what}: {_UNAVAILABLE_CODES[code]} (NVML error {code})", code)
    return NvmlError(detail, code)


def gpu_inventory() -> tuple[list[dict[str, Any]], str | None]:
    """Describe every visible GPU for ``charbench env``; never raises.

    Returns:
        ``(rows, reason)``: one dict per visible GPU (keys: index, name, uuid,
        pci_bus_id, driver, memory_total_mib, sm_clock_mhz, mem_clock_mhz,
        max_sm_clock_mhz, power_limit_w, power_limit_min_w, power_limit_max_w,
        energy_counter, mig_mode, persistence_mode; an unknown value is None with a
        ``<field>_reason`` key) and None; or ``([], reason)`` without NVML.
    """
    nvml = Nvml()
    try:
        nvml.init()
    except Exception as exc:  # noqa: BLE001 - probing never crashes
        return [], str(exc)
    try:
        gpus = nvml.visible_gpus()
        driver = _safe(lambda: nvml.driver_version())
        return [_inventory_row(nvml, gpu, driver) for gpu in gpus], None
    except Exception as exc:  # noqa: BLE001
        return [], f"listing GPUs failed: {exc}"
    finally:
        nvml.shutdown()


def _safe(fn: Callable[[], T]) -> tuple[T | None, str | None]:
    try:
        return fn(), None
    except Exception as exc:  # noqa: BLE001 - inventory records the reason instead
        return None, str(exc)


def _inventory_row(nvml: Nvml, gpu: GpuRef, driver: tuple[str | None, str | None]) -> dict[str, Any]:
    row: dict[str, Any] = {
        "index": gpu.visible_index, "name": gpu.name, "uuid": gpu.uuid, "pci_bus_id": gpu.pci_bus_id,
    }
    if gpu.mig_uuid:
        row["mig_uuid"] = gpu.mig_uuid

    def put(key: str, result: tuple[Any, str | None]) -> None:
        row[key] = result[0]
        if result[0] is None:
            row[f"{key}_reason"] = result[1] or "not reported by NVML"

    put("driver", driver)
    mem = _safe(lambda: nvml.memory_info_bytes(gpu)[0] // (1024 * 1024))
    put("memory_total_mib", mem)
    clocks = _safe(lambda: nvml.clocks_mhz(gpu))
    put("sm_clock_mhz", (clocks[0][0] if clocks[0] else None, clocks[1]))
    put("mem_clock_mhz", (clocks[0][1] if clocks[0] else None, clocks[1]))
    put("max_sm_clock_mhz", _safe(lambda: nvml.max_clocks_mhz(gpu)[0]))
    put("power_limit_w", _safe(lambda: nvml.power_limit_w(gpu)))
    limits = _safe(lambda: nvml.power_limit_constraints_w(gpu))
    put("power_limit_min_w", (limits[0][0] if limits[0] else None, limits[1]))
    put("power_limit_max_w", (limits[0][1] if limits[0] else None, limits[1]))
    put("energy_counter", _safe(lambda: nvml.energy_counter_supported(gpu)))
    mig = _safe(lambda: nvml.mig_mode(gpu))
    put("mig_mode", (mig[0], mig[1] or "MIG not supported on this GPU"))
    pers = _safe(lambda: nvml.persistence_mode(gpu))
    put("persistence_mode", (pers[0], pers[1] or "persistence mode not supported on this GPU"))
    return row
