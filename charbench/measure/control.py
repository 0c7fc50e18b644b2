"""Locked GPU clocks and power limits that are always put back.

:class:`GpuControl` changes SM clock locks and power limits on one or more GPUs and
restores them on every exit path: normal exit, an exception, SIGINT and SIGTERM
(its handlers restore, then chain to the previous handler, or raise
``KeyboardInterrupt`` / exit with ``128 + signum``), and an ``atexit`` safety net.
Clock locks are reset (NVML cannot read back an earlier lock); power limits go back
to the value read before the first change. Both need root.

Use::

    from charbench.measure.control import GpuControl, locked_clocks, power_limit

    with GpuControl([0]) as ctl:
        ctl.lock_sm_clock(1410)           # or (1200, 1410)
        ctl.set_power_limit(300)          # verified with the enforced limit
        run_the_sweep_point()
    with power_limit([0, 1], 250):
        ...
"""

from __future__ import annotations

import atexit
import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from charbench.errors import (
    ConfigError,
    DeviceError,
    MeasurementError,
    NvmlError,
    NvmlNoPermissionError,
    NvmlNotSupportedError,
)
from charbench.measure.nvml import GpuRef, Nvml

log = logging.getLogger(__name__)

ENFORCED_TOLERANCE_W = 1.0
"""How far the enforced limit may sit from the requested one (NVML rounds to mW/W)."""

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_ROOT_FIX = "run charbench as root (sudo -E, or a container with --cap-add SYS_ADMIN)"


class GpuControl:
    """Context manager that owns clock and power-limit changes on some GPUs."""

    def __init__(self, gpus: list[int], nvml: Nvml | None = None) -> None:
        """Args: gpus: visible GPU indices to control; nvml: shared NVML session."""
        self._indices = list(gpus)
        self._nvml = nvml or Nvml()
        self._held = False
        self._refs: dict[int, GpuRef] = {}
        self._saved_limits_w: dict[int, float] = {}
        self._locked: set[int] = set()
        self._active = False
        self._restoring = False
        self._pending: list[tuple[int, FrameType | None]] = []
        self._prev_handlers: dict[int, Any] = {}
        self._handler = self._on_signal

    # -- lifetime ---------------------------------------------------------------------------
    def __enter__(self) -> GpuControl:
        self.activate()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        try:
            problems = self.restore()
        finally:
            self._deactivate()
        if problems and exc_type is None:
            raise MeasurementError("could not restore GPU settings: " + "; ".join(problems))

    def activate(self) -> None:
        """Open NVML, resolve the GPUs and install the signal handlers and atexit hook.

        Raises:
            NvmlNotAvailableError: without NVML. DeviceError: an index not visible.
        """
        if self._active:
            return
        self._nvml.init()
        self._held = True
        try:
            visible = self._nvml.visible_gpus()
            for i in self._indices:
                if not 0 <= i < len(visible):
                    raise DeviceError(f"--gpus: GPU {i} is not visible; {len(visible)} visible GPU(s)")
                self._refs[i] = visible[i]
        except BaseException:
            self._nvml.shutdown()
            self._held = False
            raise
        self._active = True
        self._install_handlers()
        atexit.register(self._atexit)

    def _deactivate(self) -> None:
        if not self._active:
            return
        self._active = False
        self._uninstall_handlers()
        atexit.unregister(self._atexit)
        if self._held:
            self._nvml.shutdown()
            self._held = False

    def _atexit(self) -> None:
        problems = self.restore()
        for problem in problems:
            log.error("restoring GPU settings at exit: %s", problem)

    # -- signals ----------------------------------------------------------------------------
    def _install_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            log.warning("GpuControl outside the main thread: no signal handlers; restore relies on atexit")
            return
        for sig in _SIGNALS:
            self._prev_handlers[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handler)

    def _uninstall_handlers(self) -> None:
        for sig, prev in self._prev_handlers.items():
            if signal.getsignal(sig) == self._handler:
                signal.signal(sig, prev if prev is not None else signal.SIG_DFL)
            # else: someone installed a handler on top of ours and may chain to it;
            # ours stays in place but, inactive, it only chains on.
        if all(signal.getsignal(s) != self._handler for s in self._prev_handlers):
            self._prev_handlers = {}

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._prev_handlers.get(signum) is signal.SIG_IGN:
            return  # the signal was ignored before us: the run goes on, so do the settings
        if self._restoring:  # arrived while restoring: finish first, then act on it
            self._pending.append((signum, frame))
            return
        if self._active:
            for problem in self.restore():
                log.error("restoring GPU settings on signal %d: %s", signum, problem)
        self._chain(signum, frame)

    def _chain(self, signum: int, frame: FrameType | None) -> None:
        prev = self._prev_handlers.get(signum, signal.SIG_DFL)
        if prev is signal.SIG_IGN:
            return
        if callable(prev):
            prev(signum, frame)
            return
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    # -- changes ----------------------------------------------------------------------------
    def _ensure_active(self) -> None:
        if not self._active:
            raise MeasurementError("GpuControl is not active; use it as `with GpuControl(gpus) as ctl:`")

    def lock_sm_clock(self, mhz: int | tuple[int, int]) -> None:
        """Lock the SM clock of every GPU to ``mhz`` or to the range ``(min, max)``.

        Raises:
            ConfigError: outside the GPU's supported SM clocks (names --sm-freq).
            NvmlNoPermissionError: not root. NvmlNotSupportedError: pre-Volta GPU.
        """
        self._ensure_active()
        lo, hi = (mhz, mhz) if isinstance(mhz, int) else (int(mhz[0]), int(mhz[1]))
        label = f"{lo}" if lo == hi else f"{lo}-{hi}"
        if lo <= 0 or lo > hi:
            raise ConfigError(f"--sm-freq {label} MHz: need a positive clock (or min <= max)")
        for i, ref in self._refs.items():
            try:
                supported = self._nvml.supported_sm_clocks_mhz(ref)
            except NvmlError:
                supported = []  # the driver refuses to list; NVML validates on set
            if supported and (lo < supported[0] or hi > supported[-1]):
                raise ConfigError(
                    f"--sm-freq {label} MHz is outside GPU {i}'s supported SM clocks "
                    f"{supported[0]}-{supported[-1]} MHz"
                )
        for i, ref in self._refs.items():
            self._locked.add(i)  # before the call: a signal mid-call still resets it
            try:
                self._nvml.set_locked_clocks(ref, lo, hi)
            except NvmlNoPermissionError as exc:
                self._locked.discard(i)
                raise NvmlNoPermissionError(
                    f"--sm-freq: locking GPU {i}'s SM clock needs root (NVML error 4); "
                    f"{_ROOT_FIX}, or drop --sm-freq", exc.code) from exc
            except NvmlNotSupportedError as exc:
                self._locked.discard(i)
                raise NvmlNotSupportedError(
                    f"--sm-freq: GPU {i} ({ref.name}) cannot lock its SM clock (needs Volta or newer): "
                    f"{exc}; drop --sm-freq", exc.code) from exc
            except NvmlError:
                self._locked.discard(i)
                raise

    def set_power_limit(self, watts: float) -> float:
        """Set every GPU's power limit and verify the enforced limit.

        Returns:
            The enforced limit (W) of the last GPU.

        Raises:
            ConfigError: outside a GPU's allowed range (names --power-limit and the range).
            NvmlNoPermissionError: not root.
            DeviceError: the GPU enforces a different limit after the change.
        """
        self._ensure_active()
        for i, ref in self._refs.items():
            lo, hi = self._nvml.power_limit_constraints_w(ref)
            if not lo <= watts <= hi:
                raise ConfigError(
                    f"--power-limit {watts:g} W is outside GPU {i}'s allowed range {lo:g}-{hi:g} W"
                )
        enforced = float("nan")
        for i, ref in self._refs.items():
            if i not in self._saved_limits_w:
                self._saved_limits_w[i] = self._nvml.power_limit_w(ref)
            try:
                self._nvml.set_power_limit_w(ref, watts)
            except NvmlNoPermissionError as exc:
                raise NvmlNoPermissionError(
                    f"--power-limit: setting GPU {i}'s power limit needs root (NVML error 4); "
                    f"{_ROOT_FIX}, or drop --power-limit", exc.code) from exc
            enforced = self._nvml.enforced_power_limit_w(ref)
            if abs(enforced - watts) > ENFORCED_TOLERANCE_W:
                raise DeviceError(
                    f"--power-limit {watts:g} W: GPU {i} enforces {enforced:g} W after the change "
                    "(another, lower limit applies; see `nvidia-smi -q -d POWER`)"
                )
        return enforced

    def restore(self) -> list[str]:
        """Reset clock locks and put saved power limits back; idempotent.

        Returns:
            Problems met (also logged); empty when everything was restored.
        """
        if self._restoring:
            return []
        self._restoring = True
        problems: list[str] = []
        try:
            for i in sorted(self._locked):
                try:
                    self._nvml.reset_locked_clocks(self._refs[i])
                except NvmlError as exc:
                    problems.append(f"GPU {i}: resetting locked clocks failed: {exc}")
                self._locked.discard(i)
            for i, watts in sorted(self._saved_limits_w.items()):
                try:
                    if self._nvml.power_limit_w(self._refs[i]) != watts:
                        self._nvml.set_power_limit_w(self._refs[i], watts)
                except NvmlError as exc:
                    problems.append(f"GPU {i}: restoring the power limit to {watts:g} W failed: {exc}")
            self._saved_limits_w.clear()
        finally:
            self._restoring = False
        for problem in problems:
            log.error("%s", problem)
        if self._pending:
            signum, frame = self._pending.pop(0)
            self._pending.clear()
            self._chain(signum, frame)
        return problems


@contextmanager
def locked_clocks(gpus: list[int], sm_mhz: int | tuple[int, int], nvml: Nvml | None = None) -> Iterator[GpuControl]:
    """Lock the SM clock of ``gpus`` for the duration of the block."""
    with GpuControl(gpus, nvml) as ctl:
        ctl.lock_sm_clock(sm_mhz)
        yield ctl


@contextmanager
def power_limit(gpus: list[int], watts: float, nvml: Nvml | None = None) -> Iterator[GpuControl]:
    """Set the power limit of ``gpus`` for the duration of the block."""
    with GpuControl(gpus, nvml) as ctl:
        ctl.set_power_limit(watts)
        yield ctl
