"""The environment inventory behind ``charbench env`` and every run's ``env.json``.

::

    charbench env           # table
    charbench env --json    # machine-readable

Collects OS, CPU, memory, Python, torch/CUDA, every visible GPU (via NVML), backend
probes and which meters are usable, each missing piece with why and how to fix it, and
the machine's load when the run started (``machine``: load averages, CPU frequency,
thread counts; :func:`machine_state`, which the runner also takes around every point).
Importing this module is cheap; :func:`collect_env` imports torch only where a GPU
device node exists (elsewhere the versions come from package metadata).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, TypeVar

from charbench import __version__

T = TypeVar("T")


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except (OSError, ValueError):
        pass
    return None


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def _cpu_mhz() -> tuple[float | None, str]:
    """Mean current frequency over the CPUs (MHz) and where it came from, or None and why not.

    cpufreq's ``scaling_cur_freq`` (kHz) where the kernel exposes it, else the ``cpu MHz``
    lines of /proc/cpuinfo (on many VMs a fixed nominal value, which the source says).
    """
    freqs = []
    for f in sorted(Path("/sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq/scaling_cur_freq")):
        text = _read(str(f))
        if text and text.strip().isdigit():
            freqs.append(int(text) / 1000.0)
    if freqs:
        return round(sum(freqs) / len(freqs), 1), "cpufreq scaling_cur_freq"
    text = _read("/proc/cpuinfo") or ""
    vals = []
    for line in text.splitlines():
        if line.startswith("cpu MHz"):
            try:
                vals.append(float(line.split(":", 1)[1]))
            except ValueError:
                pass
    if vals:
        return round(sum(vals) / len(vals), 1), "/proc/cpuinfo cpu MHz (may be the nominal clock on a VM)"
    return None, "no cpufreq and no 'cpu MHz' in /proc/cpuinfo on this machine"


def machine_state() -> dict[str, Any]:
    """How loaded the machine is right now: load averages, runnable tasks, CPU frequency, thread counts.

    Cheap (a few /proc reads, no imports), so the runner takes it around every point; a value
    that cannot be read is None with its reason under ``reasons``. ``busy`` follows
    :func:`charbench.noise.is_busy` (1-minute load average above the logical CPU count).

    Returns:
        ``load1``/``load5``/``load15``, ``procs_running``, ``cpu_cores``, ``cpu_mhz`` (+ ``cpu_mhz_source``),
        ``process_threads``, ``torch_threads`` (when torch is imported), ``omp_num_threads``, ``busy``, ``reasons``.
    """
    from charbench.noise import is_busy

    reasons: dict[str, str] = {}
    out: dict[str, Any] = {"load1": None, "load5": None, "load15": None, "procs_running": None}
    try:
        l1, l5, l15 = os.getloadavg()
        out.update(load1=round(l1, 2), load5=round(l5, 2), load15=round(l15, 2))
    except OSError:
        reasons["load1"] = "os.getloadavg() is not available on this system"
    la = _read("/proc/loadavg")
    if la and len(la.split()) > 3 and "/" in la.split()[3]:
        out["procs_running"] = int(la.split()[3].split("/")[0])
    else:
        reasons["procs_running"] = "no /proc/loadavg"
    out["cpu_cores"] = os.cpu_count()
    mhz, source = _cpu_mhz()
    out["cpu_mhz"] = mhz
    if mhz is None:
        reasons["cpu_mhz"] = source
    else:
        out["cpu_mhz_source"] = source
    threads = None
    for line in (_read("/proc/self/status") or "").splitlines():
        if line.startswith("Threads:"):
            threads = int(line.split()[1])
    out["process_threads"] = threads
    if threads is None:
        reasons["process_threads"] = "no /proc/self/status"
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            out["torch_threads"] = int(torch.get_num_threads())
        except Exception:  # noqa: BLE001 - a broken torch must not break the inventory
            reasons["torch_threads"] = "torch.get_num_threads() failed"
    out["omp_num_threads"] = os.environ.get("OMP_NUM_THREADS")
    out["busy"] = is_busy(out["load1"], out["cpu_cores"])
    out["reasons"] = reasons
    return out


def git_sha() -> str | None:
    """The checkout's commit when charbench runs from a git checkout, else None."""
    here = Path(__file__).resolve().parent.parent
    if not (here / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _torch_info() -> dict[str, Any]:
    """torch's version and the CUDA version it was built for.

    Importing torch takes seconds; on a Linux machine with no GPU device node it could
    not use a GPU anyway, so the versions come from the installed package's metadata
    (``torch_source`` says so) unless torch is already imported.
    """
    from charbench.device import gpu_device_nodes_present, torch_version_from_metadata

    if "torch" not in sys.modules and not gpu_device_nodes_present():
        version, cuda = torch_version_from_metadata()
        if version is None:
            return {"torch": None, "torch_cuda": None, "torch_reason": "torch is not installed; install it: pip install torch"}
        return {"torch": version, "torch_cuda": cuda, "torch_source": "package metadata (not imported: no GPU device node on this machine)"}
    try:
        import torch
    except Exception as exc:  # a broken torch must not break the inventory
        return {"torch": None, "torch_cuda": None, "torch_reason": f"torch not importable: {type(exc).__name__}: {exc}"}
    try:
        return {"torch": str(torch.__version__), "torch_cuda": torch.version.cuda, "torch_threads": torch.get_num_threads(), "torch_source": "imported"}
    except Exception as exc:
        return {"torch": None, "torch_cuda": None, "torch_reason": f"torch is installed but broken: {type(exc).__name__}: {exc}"}


def meter_status() -> list[dict[str, Any]]:
    """Each meter: usable or not, and why/how to fix."""
    from charbench.measure.nvml import nvml_available
    from charbench.measure.rapl import rapl_available

    nv_ok, nv_reason = nvml_available()
    ra_ok, ra_reason = rapl_available()
    return [
        {"meter": "nvml", "usable": nv_ok, "what": "GPU energy counter (Volta+) and power/clock/temperature sampling", "reason": None if nv_ok else nv_reason},
        {"meter": "rapl", "usable": ra_ok, "what": "CPU package and DRAM energy (Linux powercap)", "reason": None if ra_ok else ra_reason},
        {"meter": "nvml-control", "usable": nv_ok and _is_root(), "what": "locking GPU clocks and setting power limits", "reason": None if nv_ok and _is_root() else ("needs root (NVML device commands return NO_PERMISSION otherwise); run with sudo" if nv_ok else nv_reason)},
    ]


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def collect_env(argv: list[str] | None = None) -> dict[str, Any]:
    """The full inventory as a JSON-friendly dict."""
    from charbench.device import probe_backends
    from charbench.measure.nvml import gpu_inventory

    gpus, gpu_reason = _never_raise(gpu_inventory, ([], "GPU inventory failed"))
    env: dict[str, Any] = {
        "charbench_version": __version__,
        "git_sha": git_sha(),
        "command_line": argv if argv is not None else sys.argv,
        "hostname": platform.node(),
        "os": f"{platform.system()} {platform.release()}",
        "arch": platform.machine(),
        "cpu_model": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "python": platform.python_version(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }
    env.update(_torch_info())
    env["gpus"] = gpus
    env["gpus_reason"] = gpu_reason
    probes = _never_raise(probe_backends, {})
    env["backends"] = {k: {"ok": p.ok, "version": p.version, "reason": p.reason, "detail": p.detail} for k, p in probes.items()}
    env["meters"] = _never_raise(meter_status, [])
    env["machine"] = _never_raise(machine_state, {})  # load at the start; each record has its own (machine_* columns)
    return env


def _never_raise(fn: Callable[[], T], fallback: T) -> T:
    """Run a probe; an unexpected exception becomes the fallback (the inventory must always come out)."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001
        if isinstance(fallback, tuple) and len(fallback) == 2 and isinstance(fallback[1], str):
            return (fallback[0], f"{fallback[1]}: {type(exc).__name__}: {exc}")  # type: ignore[return-value]
        return fallback
