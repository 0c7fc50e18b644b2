"""Device discovery: which backends exist here, and why not when they don't.

One place answers "can this machine run X?" without ever crashing on a missing or
broken optional package::

    from charbench.device import probe_backends, resolve_device
    probes = probe_backends()            # {"torch_cuda": Probe(ok=False, reason=...), ...}
    dev = resolve_device("auto")         # "cuda:0" or "cpu"

GPU indices are *visible* indices (after ``CUDA_VISIBLE_DEVICES``); mapping them to NVML
handles by UUID / PCI bus id happens in :mod:`charbench.measure.nvml`.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from charbench.errors import ConfigError, DeviceError


@dataclass(frozen=True)
class Probe:
    """Result of one availability probe.

    Attributes:
        ok: the backend is usable.
        version: its version when known.
        reason: why it is not usable, and how to fix it (None when ok).
        detail: extra facts (e.g. compute capability).
    """

    ok: bool
    version: str | None = None
    reason: str | None = None
    detail: str | None = None


def _import_probe(module: str, fix: str) -> tuple[object | None, Probe]:
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        return None, Probe(False, reason=f"{module} is not installed ({exc.__class__.__name__}); {fix}")
    except Exception as exc:  # a broken install must not crash discovery
        return None, Probe(False, reason=f"{module} failed to import: {exc}; {fix}")
    return mod, Probe(True, version=getattr(mod, "__version__", None))


@functools.lru_cache(maxsize=1)
def probe_torch_cuda() -> Probe:
    """Is torch installed with a CUDA device visible?

    On Linux without any GPU device node (``/dev/nvidia*``, ``/dev/dxg``, ``/dev/kfd``)
    no CUDA device can be visible, so torch is not imported (that costs seconds): the
    answer comes from the installed package's metadata and ``torch/version.py``.
    """
    if not gpu_device_nodes_present():
        version, cuda_ver = torch_version_from_metadata()
        if version is None:
            return Probe(False, reason="torch is not installed; install it: pip install torch")
        if not cuda_ver:
            return Probe(False, version=version, reason="torch is a CPU-only build; install a CUDA build of torch for GPU runs")
        return Probe(False, version=cuda_ver, reason="no NVIDIA GPU device node (/dev/nvidia0) on this machine; check the driver with nvidia-smi")
    torch, p = _import_probe("torch", "install it: pip install torch")
    if torch is None:
        return p
    try:
        return _torch_cuda_facts(torch)
    except Exception as exc:  # a broken torch install must not crash discovery
        return Probe(False, reason=f"torch is installed but broken ({type(exc).__name__}: {exc}); reinstall torch")


def _torch_cuda_facts(torch: object) -> Probe:
    version = str(getattr(torch, "__version__", "unknown"))
    cuda_ver = getattr(torch.version, "cuda", None)  # type: ignore[attr-defined]
    if not cuda_ver:
        return Probe(False, version=version, reason="torch is a CPU-only build; install a CUDA build of torch for GPU runs")
    try:
        n = torch.cuda.device_count()  # type: ignore[attr-defined]
    except Exception as exc:
        return Probe(False, version=cuda_ver, reason=f"CUDA runtime error: {exc}; check the driver with nvidia-smi")
    if n == 0:
        vis = os.environ.get("CUDA_VISIBLE_DEVICES")
        hint = f" (CUDA_VISIBLE_DEVICES={vis!r})" if vis is not None else ""
        return Probe(False, version=cuda_ver, reason=f"no CUDA device visible{hint}; check the driver with nvidia-smi")
    caps = [torch.cuda.get_device_capability(i) for i in range(n)]  # type: ignore[attr-defined]
    detail = ", ".join(f"cuda:{i} sm_{a}{b}" for i, (a, b) in enumerate(caps))
    return Probe(True, version=cuda_ver, detail=detail)


#: device nodes of which at least one exists wherever a GPU can be used from Linux
#: (NVIDIA driver, WSL2's paravirtual GPU, ROCm for torch's HIP build)
GPU_DEVICE_NODES = ("/dev/nvidia0", "/dev/nvidiactl", "/dev/dxg", "/dev/kfd")


def gpu_device_nodes_present() -> bool:
    """False only on Linux with no GPU device node at all (then no CUDA device can be visible)."""
    if not sys.platform.startswith("linux"):
        return True  # no cheap test elsewhere: ask torch
    return any(os.path.exists(p) for p in GPU_DEVICE_NODES)


def torch_version_from_metadata() -> tuple[str | None, str | None]:
    """``(torch version, CUDA version it was built for)`` without importing torch.

    Reads the installed distribution's metadata and its ``torch/version.py``; the CUDA
    version is None for a CPU-only build (or when the file cannot be read).
    """
    from importlib import metadata

    try:
        dist = metadata.distribution("torch")
    except Exception:
        return None, None
    version = dist.version
    cuda_ver: str | None = None
    try:
        text = Path(str(dist.locate_file("torch/version.py"))).read_text(encoding="utf-8")
        m = re.search(r"^cuda\s*(?::\s*[^=]+)?=\s*['\"]([^'\"]+)['\"]", text, re.M)
        cuda_ver = m.group(1) if m else None
    except (OSError, UnicodeDecodeError):
        pass
    return version, cuda_ver


@functools.lru_cache(maxsize=1)
def probe_cupy() -> Probe:
    """Is CuPy importable and able to see a GPU?"""
    cupy, p = _import_probe("cupy", "install the extra: pip install 'charbench[cuda12]' (or [cuda13])")
    if cupy is None:
        return p
    try:
        n = cupy.cuda.runtime.getDeviceCount()  # type: ignore[attr-defined]
    except Exception as exc:
        return Probe(False, version=p.version, reason=f"CuPy cannot reach a GPU: {exc}")
    return Probe(True, version=p.version, detail=f"{n} device(s)")


@functools.lru_cache(maxsize=1)
def probe_triton() -> Probe:
    """Is Triton importable? (Runs on GPUs, or on CPU under TRITON_INTERPRET=1.)"""
    _, p = _import_probe("triton", "install the extra: pip install 'charbench[triton]'")
    if p.ok and os.environ.get("TRITON_INTERPRET") == "1":
        return Probe(True, version=p.version, detail="interpreter mode (TRITON_INTERPRET=1)")
    return p


@functools.lru_cache(maxsize=1)
def probe_nvcc() -> Probe:
    """Is the CUDA compiler on PATH (or in $CUDA_HOME/bin)?"""
    path = shutil.which("nvcc")
    if path is None and os.environ.get("CUDA_HOME"):
        cand = os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc")
        path = cand if os.path.exists(cand) else None
    if path is None:
        return Probe(False, reason="nvcc not found; install the CUDA toolkit or set CUDA_HOME")
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Probe(False, reason=f"nvcc at {path} failed to run: {exc}")
    lines = [ln.strip() for ln in out.strip().splitlines() if ln.strip()]
    # "Cuda compilation tools, release 12.4, V12.4.131" names the version; the last line is a build id
    version = next((ln for ln in lines if "release" in ln), lines[-1] if lines else None)
    return Probe(True, version=version, detail=path)


def probe_backends() -> dict[str, Probe]:
    """All backend probes, keyed ``torch_cuda``, ``cupy``, ``triton``, ``nvcc``."""
    return {"torch_cuda": probe_torch_cuda(), "cupy": probe_cupy(), "triton": probe_triton(), "nvcc": probe_nvcc()}


def resolve_device(spec: str) -> str:
    """Turn ``--device`` into a concrete torch device string.

    Args:
        spec: ``auto``, ``cpu``, ``cuda`` or ``cuda:i`` (i is a visible index).

    Returns:
        ``cpu`` or ``cuda:i``.

    Raises:
        DeviceError: CUDA was asked for but is not usable, or the index is out of range.
    """
    spec = spec.strip().lower()
    if spec == "cpu":
        return "cpu"
    if spec == "auto":
        return "cuda:0" if probe_torch_cuda().ok else "cpu"
    if spec == "cuda" or spec.startswith("cuda:"):
        p = probe_torch_cuda()
        if not p.ok:
            raise DeviceError(f"--device {spec}: CUDA is not usable here ({p.reason}); use --device cpu")
        index = 0 if spec == "cuda" else _parse_index(spec)
        import torch

        n = torch.cuda.device_count()
        if index >= n:
            raise DeviceError(f"--device {spec}: only {n} CUDA device(s) visible (cuda:0..cuda:{n - 1})")
        return f"cuda:{index}"
    raise DeviceError(f"--device: unknown device {spec!r}; valid: auto, cpu, cuda, cuda:N")


def _parse_index(spec: str) -> int:
    try:
        index = int(spec.split(":", 1)[1])
    except ValueError:
        raise DeviceError(f"--device {spec}: the index must be an integer, e.g. cuda:0") from None
    if index < 0:
        raise DeviceError(f"--device {spec}: the index must be >= 0")
    return index


def gpu_index(device: str) -> int | None:
    """Visible GPU index of ``cuda:i`` (None for cpu)."""
    return int(device.split(":", 1)[1]) if device.startswith("cuda:") else None


def memory_bytes(device: str) -> tuple[int, int] | None:
    """(free, total) memory of ``device`` in bytes, None when unknown.

    A GPU answers through cudaMemGetInfo; the CPU through /proc/meminfo (MemAvailable,
    MemTotal): the machine's RAM.
    """
    if device.startswith("cuda"):
        import torch

        free, total = torch.cuda.mem_get_info(gpu_index(device) or 0)
        return int(free), int(total)
    fields: dict[str, int] = {}
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name in ("MemAvailable", "MemTotal"):
                    fields[name] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    if len(fields) < 2:
        return None
    return fields["MemAvailable"], fields["MemTotal"]


def check_fits_memory(size_gib: float, device: str, option: str) -> None:
    """Refuse a buffer size (GiB) larger than the device's whole memory, before allocating it.

    Raises:
        ConfigError: naming ``option``, the size and the memory there is (RAM on the CPU).
    """
    mem = memory_bytes(device)
    if mem is None:
        return  # unknown memory: the allocation itself will tell
    total = mem[1]
    if size_gib * 1024.0**3 > total:
        where = "RAM on this machine (cpu)" if not device.startswith("cuda") else f"memory on {device}"
        raise ConfigError(
            f"{option} {size_gib:g}: more than the {total / 1024.0**3:.1f} GiB of {where}; "
            f"give a smaller {option}, or omit it for the engine's default"
        )


def set_cpu_threads(device: str, threads: int | None) -> str | None:
    """Set torch's intra-op thread count for a CPU run (a study's ``--cpu-threads``).

    Args:
        device: the resolved device; only ``cpu`` is affected.
        threads: threads to use; None leaves torch's default (one per core).

    Returns:
        A log line saying what was set, or None when nothing was.
    """
    if device != "cpu" or threads is None:
        return None
    import torch

    torch.set_num_threads(threads)
    return f"cpu: {threads} torch thread(s)"

