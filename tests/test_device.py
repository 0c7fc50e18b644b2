"""Device discovery: probes never crash on missing or broken optional packages."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from charbench import device
from charbench.device import Probe, gpu_index, probe_backends, probe_cupy, probe_nvcc, probe_torch_cuda, probe_triton, resolve_device
from charbench.errors import DeviceError


def _broken_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, error: str = "RuntimeError('libcuda.so: bad ELF header')") -> None:
    """Make ``import name`` raise ``error`` (a broken install)."""
    pkg = tmp_path / "broken_pkgs"
    pkg.mkdir(exist_ok=True)
    (pkg / f"{name}.py").write_text(f"raise {error}\n")
    monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(str(pkg))


def _fake_torch(cuda: str | None = "12.4", caps: list[tuple[int, int]] | None = None, count_error: Exception | None = None) -> types.ModuleType:
    torch = types.ModuleType("torch")
    torch.__version__ = "2.5.0"  # type: ignore[attr-defined]
    torch.version = types.SimpleNamespace(cuda=cuda)  # type: ignore[attr-defined]
    caps = caps if caps is not None else [(9, 0), (8, 0)]

    def device_count() -> int:
        if count_error is not None:
            raise count_error
        return len(caps)

    torch.cuda = types.SimpleNamespace(device_count=device_count, get_device_capability=lambda i: caps[i])  # type: ignore[attr-defined]
    return torch


@pytest.fixture
def gpu_nodes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend GPU device nodes exist, so the probe really asks torch."""
    monkeypatch.setattr(device, "gpu_device_nodes_present", lambda: True)


@pytest.mark.usefixtures("gpu_nodes")
def test_torch_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)
    p = probe_torch_cuda()
    assert p == Probe(False, reason="torch is not installed (ModuleNotFoundError); install it: pip install torch")


@pytest.mark.usefixtures("gpu_nodes")
def test_torch_raising_on_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _broken_module(tmp_path, monkeypatch, "torch")
    p = probe_torch_cuda()
    assert not p.ok
    assert p.reason == "torch failed to import: libcuda.so: bad ELF header; install it: pip install torch"
    assert resolve_device("auto") == "cpu"


@pytest.mark.usefixtures("gpu_nodes")
def test_torch_half_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", types.ModuleType("torch"))  # no .version, no .cuda
    p = probe_torch_cuda()
    assert not p.ok and p.reason is not None
    assert p.reason.startswith("torch is installed but broken (AttributeError:") and p.reason.endswith("; reinstall torch")


@pytest.mark.usefixtures("gpu_nodes")
def test_torch_cuda_found_and_resolve_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", _fake_torch())
    assert probe_torch_cuda() == Probe(True, version="12.4", detail="cuda:0 sm_90, cuda:1 sm_80")
    assert resolve_device("auto") == "cuda:0"
    assert resolve_device("CUDA") == "cuda:0"
    assert resolve_device(" cuda:1 ") == "cuda:1"
    with pytest.raises(DeviceError) as ei:
        resolve_device("cuda:2")
    assert str(ei.value) == "--device cuda:2: only 2 CUDA device(s) visible (cuda:0..cuda:1)"
    with pytest.raises(DeviceError) as ei:
        resolve_device("cuda:x")
    assert str(ei.value) == "--device cuda:x: the index must be an integer, e.g. cuda:0"
    with pytest.raises(DeviceError) as ei:
        resolve_device("cuda:-1")
    assert str(ei.value) == "--device cuda:-1: the index must be >= 0"


@pytest.mark.usefixtures("gpu_nodes")
@pytest.mark.parametrize(
    ("torch_mod", "env", "reason"),
    [
        (_fake_torch(cuda=None), None, "torch is a CPU-only build; install a CUDA build of torch for GPU runs"),
        (_fake_torch(caps=[]), "", "no CUDA device visible (CUDA_VISIBLE_DEVICES=''); check the driver with nvidia-smi"),
        (_fake_torch(count_error=RuntimeError("driver too old")), None, "CUDA runtime error: driver too old; check the driver with nvidia-smi"),
    ],
)
def test_torch_cuda_unusable_reasons(monkeypatch: pytest.MonkeyPatch, torch_mod: types.ModuleType, env: str | None, reason: str) -> None:
    monkeypatch.setitem(sys.modules, "torch", torch_mod)
    if env is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", env)
    p = probe_torch_cuda()
    assert not p.ok and p.reason == reason
    assert resolve_device("auto") == "cpu"
    with pytest.raises(DeviceError) as ei:
        resolve_device("cuda")
    assert str(ei.value) == f"--device cuda: CUDA is not usable here ({reason}); use --device cpu"


def test_no_gpu_nodes_answers_without_importing_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device, "gpu_device_nodes_present", lambda: False)
    monkeypatch.setitem(sys.modules, "torch", None)  # an import attempt would say "not installed"
    monkeypatch.setattr(device, "torch_version_from_metadata", lambda: ("2.5.0+cu124", "12.4"))
    p = probe_torch_cuda()
    assert p == Probe(False, version="12.4", reason="no NVIDIA GPU device node (/dev/nvidia0) on this machine; check the driver with nvidia-smi")
    device.probe_torch_cuda.cache_clear()
    monkeypatch.setattr(device, "torch_version_from_metadata", lambda: ("2.5.0+cpu", None))
    assert probe_torch_cuda().reason == "torch is a CPU-only build; install a CUDA build of torch for GPU runs"
    device.probe_torch_cuda.cache_clear()
    monkeypatch.setattr(device, "torch_version_from_metadata", lambda: (None, None))
    assert probe_torch_cuda() == Probe(False, reason="torch is not installed; install it: pip install torch")


def test_torch_version_from_metadata_matches_installed_torch() -> None:
    import torch

    version, cuda = device.torch_version_from_metadata()
    assert version == torch.__version__.split("+")[0] or version == torch.__version__
    assert cuda == torch.version.cuda


def test_gpu_device_nodes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device.sys, "platform", "linux")
    monkeypatch.setattr(device.os.path, "exists", lambda p: p == "/dev/dxg")
    assert device.gpu_device_nodes_present()
    monkeypatch.setattr(device.os.path, "exists", lambda p: False)
    assert not device.gpu_device_nodes_present()
    monkeypatch.setattr(device.sys, "platform", "win32")
    assert device.gpu_device_nodes_present()


def test_cupy_missing_broken_and_gpu_less(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cupy", None)
    assert probe_cupy().reason == "cupy is not installed (ModuleNotFoundError); install the extra: pip install 'charbench[cuda12]' (or [cuda13])"
    device.probe_cupy.cache_clear()
    _broken_module(tmp_path, monkeypatch, "cupy", "ImportError('CuPy is not correctly installed')")
    assert probe_cupy().reason == "cupy is not installed (ImportError); install the extra: pip install 'charbench[cuda12]' (or [cuda13])"
    device.probe_cupy.cache_clear()
    fake = types.ModuleType("cupy")
    fake.__version__ = "13.3.0"  # type: ignore[attr-defined]

    def no_gpu() -> int:
        raise RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")

    fake.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=no_gpu))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "cupy", fake)
    assert probe_cupy() == Probe(False, version="13.3.0", reason="CuPy cannot reach a GPU: cudaErrorNoDevice: no CUDA-capable device is detected")
    device.probe_cupy.cache_clear()
    fake.cuda.runtime.getDeviceCount = lambda: 2  # type: ignore[attr-defined]
    assert probe_cupy() == Probe(True, version="13.3.0", detail="2 device(s)")


def test_triton_missing_broken_and_interpreter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "triton", None)
    assert probe_triton().reason == "triton is not installed (ModuleNotFoundError); install the extra: pip install 'charbench[triton]'"
    device.probe_triton.cache_clear()
    _broken_module(tmp_path, monkeypatch, "triton", "OSError('libtriton.so: undefined symbol')")
    assert probe_triton().reason == "triton failed to import: libtriton.so: undefined symbol; install the extra: pip install 'charbench[triton]'"
    device.probe_triton.cache_clear()
    fake = types.ModuleType("triton")
    fake.__version__ = "3.1.0"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "triton", fake)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert probe_triton() == Probe(True, version="3.1.0", detail="interpreter mode (TRITON_INTERPRET=1)")


def test_nvcc_missing_found_and_failing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device.shutil, "which", lambda name: None)
    monkeypatch.delenv("CUDA_HOME", raising=False)
    assert probe_nvcc() == Probe(False, reason="nvcc not found; install the CUDA toolkit or set CUDA_HOME")
    device.probe_nvcc.cache_clear()
    bin_dir = tmp_path / "cuda" / "bin"
    bin_dir.mkdir(parents=True)
    nvcc = bin_dir / "nvcc"
    nvcc.write_text("#!/bin/sh\necho 'nvcc: NVIDIA (R) Cuda compiler driver'\necho 'Cuda compilation tools, release 12.4, V12.4.131'\n")
    nvcc.chmod(0o755)
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "cuda"))
    assert probe_nvcc() == Probe(True, version="Cuda compilation tools, release 12.4, V12.4.131", detail=str(nvcc))
    device.probe_nvcc.cache_clear()
    nvcc.chmod(0o644)  # not executable: running it fails
    p = probe_nvcc()
    assert not p.ok and p.reason is not None and p.reason.startswith(f"nvcc at {nvcc} failed to run:")


@pytest.mark.usefixtures("gpu_nodes")
def test_probe_backends_with_everything_broken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("torch", "cupy", "triton"):
        _broken_module(tmp_path, monkeypatch, name, "SystemError('corrupt install')")
    monkeypatch.setattr(device.shutil, "which", lambda name: None)
    monkeypatch.delenv("CUDA_HOME", raising=False)
    probes = probe_backends()
    assert list(probes) == ["torch_cuda", "cupy", "triton", "nvcc"]
    assert not any(p.ok for p in probes.values())
    assert all(p.reason for p in probes.values())
    assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"


def test_resolve_device_unknown_and_gpu_index() -> None:
    with pytest.raises(DeviceError) as ei:
        resolve_device("tpu")
    assert str(ei.value) == "--device: unknown device 'tpu'; valid: auto, cpu, cuda, cuda:N"
    assert gpu_index("cuda:3") == 3 and gpu_index("cpu") is None


@pytest.mark.gpu
def test_real_cuda_device() -> None:
    if not device.gpu_device_nodes_present():
        pytest.skip("needs an NVIDIA GPU")
    p = probe_torch_cuda()
    if not p.ok:
        pytest.skip(f"needs CUDA: {p.reason}")
    assert resolve_device("auto") == "cuda:0" and resolve_device("cuda") == "cuda:0"
    assert p.detail is not None and p.detail.startswith("cuda:0 sm_")


def test_set_cpu_threads_only_touches_a_cpu_run() -> None:
    import torch

    from charbench.device import set_cpu_threads

    before = torch.get_num_threads()
    try:
        assert set_cpu_threads("cuda:0", 1) is None
        assert set_cpu_threads("cpu", None) is None
        assert torch.get_num_threads() == before
        assert set_cpu_threads("cpu", 1) == "cpu: 1 torch thread(s)"
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
