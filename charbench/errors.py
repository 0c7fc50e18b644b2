"""The charbench error hierarchy.

Every error a user can cause or fix derives from :class:`CharbenchError`; the CLI
prints ``Error: <message>`` and exits 1 (no traceback unless ``--debug``). Messages
name the option at fault and the fix, e.g.::

    raise ConfigError("--dtypes: unknown dtype 'fp64'; valid: fp32, tf32, fp16, bf16")
"""

from __future__ import annotations


class CharbenchError(Exception):
    """Base of every error charbench reports to a user (exit code 1)."""

    exit_code: int = 1


class UsageError(CharbenchError):
    """Bad command-line usage that the parser could not catch (exit code 2)."""

    exit_code = 2


class ConfigError(CharbenchError):
    """An option, preset or config-file value is invalid."""


class DeviceError(CharbenchError):
    """The requested device or backend is missing or cannot run the request."""


class BackendUnavailableError(DeviceError):
    """An optional backend (CuPy, Triton, nvcc, CUDA) is not usable here."""


class OutOfDeviceMemoryError(DeviceError):
    """A request would not fit in device memory; raised before allocating."""


class MeasurementError(CharbenchError):
    """A meter or sampler failed in a way the caller must know about."""


class NvmlError(MeasurementError):
    """An NVML call failed; ``code`` is the NVML return code when known."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class NvmlNotAvailableError(NvmlError):
    """NVML (the driver library or the nvidia-ml-py binding) is not usable."""


class NvmlNoPermissionError(NvmlError):
    """An NVML device command needs root (clocks, power limits)."""


class NvmlNotSupportedError(NvmlError):
    """The GPU does not support the NVML call (e.g. energy counter before Volta)."""


class NvmlInvalidArgumentError(NvmlError):
    """An NVML call got a value outside the device's allowed range."""


class RaplError(MeasurementError):
    """Linux powercap/RAPL zones are missing or unreadable."""


class RunStoreError(CharbenchError):
    """A run folder is missing, incomplete or from another study."""


class PointFailedError(CharbenchError):
    """A sweep point failed (e.g. NaN/Inf in an output); recorded, not fatal with --continue-on-error."""
