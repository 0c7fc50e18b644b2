"""The environment inventory (env.json, ``charbench env``): complete, honest, never crashing."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from charbench import __version__, device, envinfo
from charbench.cli import main
from charbench.commands.env import gpu_rows, machine_rows
from charbench.measure.testing import FakeGpu, FakePowercap, fake_nvml

KEYS = {
    "charbench_version", "git_sha", "command_line", "hostname", "os", "arch", "cpu_model", "cpu_cores", "memory_gib",
    "python", "cuda_visible_devices", "torch", "torch_cuda", "gpus", "gpus_reason", "backends", "meters",
}


def test_collect_env_has_every_section() -> None:
    env = envinfo.collect_env(argv=["charbench", "env"])
    assert KEYS <= set(env)
    assert env["charbench_version"] == __version__ and env["command_line"] == ["charbench", "env"]
    assert env["python"] == ".".join(map(str, sys.version_info[:3]))
    assert isinstance(env["cpu_cores"], int)
    assert env["memory_gib"] is None or env["memory_gib"] > 0
    assert list(env["backends"]) == ["torch_cuda", "cupy", "triton", "nvcc"]
    assert [m["meter"] for m in env["meters"]] == ["nvml", "rapl", "nvml-control"]
    for m in env["meters"]:
        assert m["usable"] or m["reason"], m  # every unusable meter says why
    for name, b in env["backends"].items():
        assert b["ok"] or b["reason"], name
    json.dumps(env)  # env.json must serialize


def test_git_sha(monkeypatch: pytest.MonkeyPatch) -> None:
    sha = envinfo.git_sha()
    checkout = Path(envinfo.__file__).resolve().parent.parent
    if (checkout / ".git").exists():  # this test suite runs from the checkout: the sha must be HEAD's
        head = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        assert sha == head.stdout.strip() and re.fullmatch(r"[0-9a-f]{40}", sha or "")
    else:
        assert sha is None

    def no_git(*a: object, **k: object) -> None:
        raise OSError("git: not found")

    monkeypatch.setattr(envinfo.subprocess, "run", no_git)
    assert envinfo.git_sha() is None
    # a repository without commits: `git rev-parse HEAD` prints "HEAD" and exits 128
    monkeypatch.setattr(envinfo.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 128, stdout="HEAD\n", stderr="fatal"))
    assert envinfo.git_sha() is None


def test_torch_from_metadata_without_gpu_nodes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device, "gpu_device_nodes_present", lambda: False)
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    monkeypatch.setattr(device, "torch_version_from_metadata", lambda: ("2.5.0+cu124", "12.4"))
    info = envinfo._torch_info()
    assert info == {"torch": "2.5.0+cu124", "torch_cuda": "12.4", "torch_source": "package metadata (not imported: no GPU device node on this machine)"}
    assert "torch" not in sys.modules
    monkeypatch.setattr(device, "torch_version_from_metadata", lambda: (None, None))
    assert envinfo._torch_info()["torch_reason"] == "torch is not installed; install it: pip install torch"


def test_torch_imported_where_a_gpu_could_be(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(device, "gpu_device_nodes_present", lambda: True)
    info = envinfo._torch_info()
    assert info["torch"] == torch.__version__ and info["torch_cuda"] == torch.version.cuda and info["torch_source"] == "imported"
    monkeypatch.setitem(sys.modules, "torch", None)
    info = envinfo._torch_info()
    assert info["torch"] is None and info["torch_reason"].startswith("torch not importable: ModuleNotFoundError")


def test_broken_optional_packages_never_break_the_inventory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device, "gpu_device_nodes_present", lambda: True)
    for name in ("torch", "cupy", "triton"):
        monkeypatch.setitem(sys.modules, name, None)

    def boom() -> None:
        raise RuntimeError("driver exploded")

    monkeypatch.setattr("charbench.measure.nvml.gpu_inventory", boom)
    env = envinfo.collect_env(argv=[])
    assert env["torch"] is None and env["gpus"] == []
    assert env["gpus_reason"] == "GPU inventory failed: RuntimeError: driver exploded"
    assert not env["backends"]["torch_cuda"]["ok"] and not env["backends"]["cupy"]["ok"] and not env["backends"]["triton"]["ok"]


def test_fake_gpu_inventory_and_meters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(envinfo, "_is_root", lambda: False)
    with fake_nvml([FakeGpu(), FakeGpu(name="NVIDIA A100-SXM4-40GB", uuid="GPU-2", pci_bus_id="00000000:19:00.0", mig_mode=None)]):
        env = envinfo.collect_env(argv=[])
    assert [g["name"] for g in env["gpus"]] == ["NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB"]
    g0 = env["gpus"][0]
    assert g0["index"] == 0 and g0["power_limit_w"] == 700.0 and g0["memory_total_mib"] == 80 * 1024 and g0["driver"]
    meters = {m["meter"]: m for m in env["meters"]}
    assert meters["nvml"]["usable"] and meters["nvml"]["reason"] is None
    assert not meters["nvml-control"]["usable"] and "needs root" in meters["nvml-control"]["reason"]
    rows = dict(gpu_rows(env["gpus"][1]))
    assert rows["mig_mode"] == "— (MIG not supported on this GPU)" and "mig_mode_reason" not in rows


def test_nvml_binding_missing_reason() -> None:
    with fake_nvml(missing=True):
        env = envinfo.collect_env(argv=[])
    meters = {m["meter"]: m for m in env["meters"]}
    assert not meters["nvml"]["usable"] and "pip install nvidia-ml-py" in meters["nvml"]["reason"]
    assert env["gpus"] == [] and "nvidia-ml-py" in env["gpus_reason"]


def test_rapl_permission_reason_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from charbench.measure import rapl

    real = rapl.rapl_available
    with FakePowercap(tmp_path / "powercap") as pc:
        pc.add_standard()
        pc.deny("intel-rapl:0")
        monkeypatch.setattr(rapl, "rapl_available", lambda: real(pc.root))
        meters = {m["meter"]: m for m in envinfo.meter_status()}
        assert not meters["rapl"]["usable"]
        assert "permission denied" in meters["rapl"]["reason"] and "chmod a+r" in meters["rapl"]["reason"]
    with FakePowercap(tmp_path / "ok") as pc:
        pc.add_standard()
        monkeypatch.setattr(rapl, "rapl_available", lambda: real(pc.root))
        meters = {m["meter"]: m for m in envinfo.meter_status()}
        assert meters["rapl"]["usable"] and meters["rapl"]["reason"] is None


def test_machine_rows_spell_out_missing_torch() -> None:
    rows = dict(machine_rows({"torch": "2.5.0+cpu", "torch_cuda": None}))
    assert rows["torch_cuda"] == "none (CPU-only build of torch)"
    rows = dict(machine_rows({"torch": None, "torch_reason": "torch not importable: boom"}))
    assert rows["torch"] == "not usable (torch not importable: boom)" and rows["torch_cuda"] == "—"


def test_env_command_json_and_table(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["env", "--json"]) == 0
    env = json.loads(capsys.readouterr().out)
    assert KEYS <= set(env)
    with fake_nvml([FakeGpu()]):
        assert main(["env"]) == 0
    out = capsys.readouterr().out
    for needle in ("Machine", "Backends", "Meters", "GPU 0: NVIDIA H100 80GB HBM3", "power_limit_w", "nvml-control", "torch_cuda"):
        assert needle in out, needle
    with fake_nvml(missing=True):
        assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert "GPUs: none (nvidia-ml-py is not installed" in out
    if "cupy is not installed" in out:
        assert "'charbench[cuda12]' (or [cuda13])" in out  # reasons are printed literally, not as rich markup


def test_env_command_imports_no_report_stack() -> None:
    code = (
        "import sys, io, contextlib, time\n"
        "from charbench.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    rc = main(['env', '--json'])\n"
        "print(rc, 'plotly' in sys.modules, 'pandas' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0", "False", "False"]


@pytest.mark.gpu
def test_real_gpu_inventory() -> None:
    from charbench.measure.nvml import nvml_available

    if not device.probe_torch_cuda().ok or not nvml_available()[0]:
        pytest.skip("needs a CUDA GPU with NVML")
    env = envinfo.collect_env(argv=[])
    assert env["gpus"] and env["gpus"][0]["name"] and env["gpus"][0]["driver"]
    assert env["torch_source"] == "imported" and env["torch_cuda"]
    assert env["backends"]["torch_cuda"]["ok"] and env["backends"]["torch_cuda"]["detail"].startswith("cuda:0 sm_")
    assert {m["meter"]: m for m in env["meters"]}["nvml"]["usable"]
