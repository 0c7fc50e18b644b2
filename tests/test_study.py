"""The study runner end to end on the CPU with the real measure package.

Covers the run folder, null-not-zero energy, resume, Ctrl-C, --continue-on-error,
seeded order, progress lines, restoring device control, and Window record fields.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from charbench import __version__
from charbench.config import CommonOptions
from charbench.errors import CharbenchError, ConfigError, RunStoreError
from charbench.measure.meters import Measurement
from charbench.results import RunStore
from charbench.record import Record
from charbench.study import Context, RunSettings, Study, Window, finalize_record, run_study
from charbench.sweep import expand

FAST = RunSettings(sample_interval_s=0.01)


@dataclass
class ToyConfig:
    n: int = 5
    scale: float = 1.0


class Toy(Study):
    """Sums numbers in a measured window; can fail or be interrupted at a chosen point."""

    name = "toy"

    def __init__(self, cfg: ToyConfig | None = None, fail_on: int | None = None, interrupt_on: int | None = None) -> None:
        self.cfg = cfg or ToyConfig()
        self.fail_on = fail_on
        self.interrupt_on = interrupt_on
        self.calls: list[int] = []
        self.torn_down = 0

    def points(self) -> list[dict[str, Any]]:
        return expand({"i": list(range(self.cfg.n)), "scale": self.cfg.scale})

    def run_point(self, params: dict[str, Any], ctx: Context) -> dict[str, Any]:
        i = params["i"]
        self.calls.append(i)
        if i == self.interrupt_on:
            raise KeyboardInterrupt
        if i == self.fail_on:
            raise ValueError("NaN in output")
        with ctx.window("sum") as w:
            total = sum(range(10_000 * (i + 1)))
        return w.fields().update({"total_count": total, "flops_estimated": float(i)})

    def finalize(self, store: RunStore, ctx: Context) -> dict[str, Any]:
        return {"points": len(store.records())}

    def teardown(self, ctx: Context) -> None:
        self.torn_down += 1


def _common(home: Path, **kw: Any) -> CommonOptions:
    return CommonOptions(out=home, label=kw.pop("label", "t"), device="cpu", **kw)


def _meta(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "run.json").read_text())


def test_full_run_folder_and_null_energy(charbench_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    study = Toy()
    res = run_study(study, _common(charbench_home, meta={"site": "lab"}), FAST, argv=["charbench", "toy", "--label", "t"])
    assert res.status == "completed" and (res.points_done, res.points_failed) == (5, 0)
    assert res.summary == {"points": 5} and study.torn_down == 1
    run = res.run_dir
    assert run.parent == charbench_home / "toy" and re.fullmatch(r"\d{8}-\d{6}-t", run.name)
    names = {p.name for p in run.iterdir()}
    assert {"config.json", "env.json", "run.json", "results.parquet", "results.csv", "samples.parquet", "report.html"} <= names
    assert res.report == run / "report.html"
    env = json.loads((run / "env.json").read_text())
    assert env["charbench_version"] == __version__ and "git_sha" in env
    assert env["command_line"] == ["charbench", "toy", "--label", "t"] and env["device"] == "cpu"
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["study_config"] == {"n": 5, "scale": 1.0} and cfg["common"]["meta"] == {"site": "lab"}
    meta = _meta(run)
    assert meta["status"] == "completed" and meta["points_total"] == 5 and meta["meta"] == {"site": "lab"}

    df = pd.read_parquet(run / "results.parquet")
    assert list(df["point_key"]) == [f"i={i},scale=1.0" for i in range(5)]
    assert list(df["point_index"]) == list(range(5))
    assert (df["time_s"] > 0).all()
    # RAPL is not readable in the test environment (or faked unreadable below): energy is null, never 0
    rapl_readable = df["energy_j"].notna().all()
    if not rapl_readable:
        assert df["energy_j"].isna().all() and df["mean_power_w"].isna().all()
        reasons = json.loads(df["null_reasons"][0])
        assert "energy_j" in reasons and "mean_power_w" in reasons and "energy_net_j" in reasons
        csv = pd.read_csv(run / "results.csv", keep_default_na=False)
        assert set(csv["energy_j"]) == {""}
    samples = pd.read_parquet(run / "samples.parquet")
    assert "t_s" in samples.columns and len(samples) >= 1
    err = capsys.readouterr().err
    assert "[charbench] 5/5 i=4 (elapsed" in err


def test_unreadable_rapl_gives_null_with_reason(charbench_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from charbench import measure
    from charbench.measure.testing import FakePowercap

    real = measure.make_meters
    with FakePowercap(tmp_path / "powercap") as pc:
        pc.add_standard()
        pc.deny("intel-rapl:0")
        pc.deny("intel-rapl:0:2")
        monkeypatch.setattr(measure, "make_meters", lambda device, gpus=None: real(device, gpus, rapl_root=pc.root))
        res = run_study(Toy(ToyConfig(n=2)), _common(charbench_home), RunSettings(sample_interval_s=0))
    rec = RunStore.open(res.run_dir).records()[0]
    assert rec["energy_j"] is None and rec["cpu_package0_energy_j"] is None
    reasons = json.loads(rec["null_reasons"])
    assert "permission denied" in reasons["energy_j"] and "chmod" in reasons["energy_j"]
    assert "permission denied" in reasons["cpu_package0_energy_j"]
    assert json.loads(rec["provenance"]) == {}
    html = (res.run_dir / "report.html").read_text()
    assert "not measured" in html and "permission denied" in html


def test_readable_rapl_is_measured(charbench_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from charbench import measure
    from charbench.measure.testing import FakePowercap

    real = measure.make_meters

    class Burner(Toy):
        def run_point(self, params: dict[str, Any], ctx: Context) -> dict[str, Any]:
            with ctx.window("w") as w:
                pc.set_energy("intel-rapl:0", 1_000_000 + 3_000_000 * (params["i"] + 1))  # +3 J, +6 J on package-0
            pc.set_energy("intel-rapl:0", 1_000_000)
            return w.fields()

    with FakePowercap(tmp_path / "powercap") as pc:
        pc.add_standard()
        monkeypatch.setattr(measure, "make_meters", lambda device, gpus=None: real(device, gpus, rapl_root=pc.root))
        res = run_study(Burner(ToyConfig(n=2)), _common(charbench_home), RunSettings(sample_interval_s=0))
    recs = RunStore.open(res.run_dir).records()
    assert [r["cpu_package0_energy_j"] for r in recs] == pytest.approx([3.0, 6.0])
    assert [r["energy_j"] for r in recs] == pytest.approx([3.0, 6.0])  # package + dram (dram unchanged: 0 J)
    assert recs[0]["mean_power_w"] == pytest.approx(3.0 / recs[0]["time_s"])
    prov = json.loads(recs[0]["provenance"])
    assert prov["energy_j"] == "rapl" and prov["cpu_dram0_energy_j"] == "rapl"
    assert json.loads(recs[0]["null_reasons"])["energy_net_j"] == "no idle baseline (set --idle-baseline SECONDS > 0)"


def test_ctrl_c_at_point_3_then_resume_runs_only_the_rest(charbench_home: Path) -> None:
    study = Toy(interrupt_on=2)
    with pytest.raises(KeyboardInterrupt):
        run_study(study, _common(charbench_home), FAST)
    run = next((charbench_home / "toy").iterdir())
    meta = _meta(run)
    assert meta["status"] == "interrupted" and meta["points_done"] == 2 and meta["finished"]
    assert study.torn_down == 1
    assert RunStore.open(run).completed_keys() == {"i=0,scale=1.0", "i=1,scale=1.0"}
    assert not (run / "failures").exists()  # Ctrl-C is not a point failure
    samples_before = len(pd.read_parquet(run / "samples.parquet"))

    again = Toy()
    res = run_study(again, _common(charbench_home, resume=run), FAST)
    assert again.calls == [2, 3, 4]
    assert res.run_dir == run and res.status == "completed" and res.points_done == 5
    assert [r["point_index"] for r in RunStore.open(run).records()] == [0, 1, 2, 3, 4]
    assert len(pd.read_parquet(run / "samples.parquet")) >= samples_before  # earlier timeline kept
    assert _meta(run)["resumed"]
    assert len(list((charbench_home / "toy").iterdir())) == 1


def test_failure_without_continue_on_error_stops_with_hint(charbench_home: Path) -> None:
    with pytest.raises(CharbenchError) as ei:
        run_study(Toy(fail_on=2), _common(charbench_home), FAST)
    run = next((charbench_home / "toy").iterdir())
    assert str(ei.value) == (
        f"point i=2,scale=1.0 failed (ValueError: NaN in output); completed points are kept in {run}. "
        f"Rerun with --continue-on-error to go on past failures, or --resume {run} after fixing it"
    )
    meta = _meta(run)
    assert meta["status"] == "failed" and meta["points_done"] == 2 and meta["points_failed"] == 1
    failure = json.loads((run / "failures" / "i=2,scale=1.0.json").read_text())
    assert failure["error_type"] == "ValueError" and failure["params"] == {"i": 2, "scale": 1.0}

    fixed = Toy()
    res = run_study(fixed, _common(charbench_home, resume=run), FAST)
    assert fixed.calls == [2, 3, 4] and res.points_failed == 0 and res.points_done == 5
    assert not (run / "failures" / "i=2,scale=1.0.json").exists()


def test_continue_on_error_records_and_goes_on(charbench_home: Path) -> None:
    study = Toy(fail_on=1)
    res = run_study(study, _common(charbench_home, continue_on_error=True), FAST)
    assert study.calls == [0, 1, 2, 3, 4]
    assert res.status == "completed" and (res.points_done, res.points_failed) == (4, 1)
    assert [f["point_key"] for f in RunStore.open(res.run_dir).failures()] == ["i=1,scale=1.0"]
    assert "Failures (1)" in (res.run_dir / "report.html").read_text()


def test_resume_guards(charbench_home: Path) -> None:
    res = run_study(Toy(ToyConfig(n=2)), _common(charbench_home), FAST)
    with pytest.raises(ConfigError) as ei:
        run_study(Toy(ToyConfig(n=3, scale=2.0)), _common(charbench_home, resume=res.run_dir), FAST)
    assert str(ei.value) == (
        f"--resume {res.run_dir}: the run was made with another toy config (differs in: n, scale); "
        f"repeat the original options (see {res.run_dir / 'config.json'}) or start a new run without --resume"
    )

    class Other(Toy):
        name = "other"

    with pytest.raises(RunStoreError, match="that run is from 'toy', not 'other'"):
        run_study(Other(ToyConfig(n=2)), _common(charbench_home, resume=res.run_dir), FAST)
    done = Toy(ToyConfig(n=2))
    again = run_study(done, _common(charbench_home, resume=res.run_dir), FAST)
    assert done.calls == [] and again.status == "completed"


def test_seeded_shuffle_order(charbench_home: Path) -> None:
    a, b = Toy(ToyConfig(n=8)), Toy(ToyConfig(n=8))
    ra = run_study(a, _common(charbench_home, seed=3, json=True), RunSettings(shuffle=True, sample_interval_s=0))
    run_study(b, _common(charbench_home, seed=3, json=True), RunSettings(shuffle=True, sample_interval_s=0))
    assert a.calls == b.calls and a.calls != list(range(8)) and sorted(a.calls) == list(range(8))
    assert [r["i"] for r in RunStore.open(ra.run_dir).records()] == a.calls


def test_duplicate_point_keys_rejected(charbench_home: Path) -> None:
    class Dup(Toy):
        def points(self) -> list[dict[str, Any]]:
            return [{"i": 0}, {"i": 0}]

    with pytest.raises(ConfigError, match="two sweep points share the key 'i=0'"):
        run_study(Dup(), _common(charbench_home), FAST)
    assert not (charbench_home / "toy").exists()  # checked before a run folder is made


def test_bad_device_fails_before_the_run_folder(charbench_home: Path) -> None:
    from charbench.errors import DeviceError

    with pytest.raises(DeviceError, match="--device: unknown device 'tpu'"):
        run_study(Toy(), CommonOptions(out=charbench_home, device="tpu"), FAST)
    assert not charbench_home.exists()


def test_json_mode_prints_no_progress(charbench_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_study(Toy(ToyConfig(n=2)), _common(charbench_home, json=True), FAST)
    captured = capsys.readouterr()
    assert captured.out == "" and "/2 " not in captured.err


def test_idle_baseline_gives_net_energy_fields(charbench_home: Path) -> None:
    res = run_study(Toy(ToyConfig(n=1)), _common(charbench_home), RunSettings(idle_baseline_s=0.05, sample_interval_s=0))
    rec = RunStore.open(res.run_dir).records()[0]
    assert "idle_baseline_s" in rec and rec["idle_baseline_s"] > 0
    assert (res.run_dir / "baseline.json").exists()
    if rec["energy_j"] is None:
        assert rec["energy_net_j"] is None and json.loads(rec["null_reasons"])["energy_net_j"]


def test_device_control_restored_on_ctrl_c_and_bad_return(charbench_home: Path) -> None:
    class Control:
        exited = 0

        def __exit__(self, *exc: object) -> None:
            Control.exited += 1

    class Grabs(Toy):
        def run_point(self, params: dict[str, Any], ctx: Context) -> dict[str, Any]:
            ctx._control = Control()  # what ctx.control does on a GPU
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_study(Grabs(), _common(charbench_home), FAST)
    assert Control.exited == 1

    class BadReturn(Toy):
        def run_point(self, params: dict[str, Any], ctx: Context) -> Any:
            return 42

    with pytest.raises(CharbenchError, match=r"TypeError: BadReturn.run_point must return a Record/dict or a non-empty list of them, got int"):
        run_study(BadReturn(), _common(charbench_home), FAST)


def test_teardown_error_still_marks_the_run(charbench_home: Path) -> None:
    class BadTeardown(Toy):
        def teardown(self, ctx: Context) -> None:
            raise RuntimeError("teardown broke")

    with pytest.raises(RuntimeError, match="teardown broke"):
        run_study(BadTeardown(ToyConfig(n=1)), _common(charbench_home), FAST)
    run = next((charbench_home / "toy").iterdir())
    assert _meta(run)["status"] == "completed" and _meta(run)["finished"]


def test_cuda_control_needs_a_gpu(charbench_home: Path) -> None:
    class WantsClocks(Toy):
        def run_point(self, params: dict[str, Any], ctx: Context) -> dict[str, Any]:
            ctx.control  # noqa: B018 - the property is the test
            return {}

    with pytest.raises(CharbenchError, match=r"ConfigError: --sm-freq/--power-limit need a GPU; use --device cuda"):
        run_study(WantsClocks(ToyConfig(n=1)), _common(charbench_home), FAST)


# -- Window.fields and finalize_record, with hand-made measurements -------------------------

def _m(energy: dict[str, float | None], prov: dict[str, str], warnings: list[str] | None = None) -> Measurement:
    return Measurement("w", 2.0, energy, {}, prov, warnings or [])


class _Baseline:
    def __init__(self, power_w: dict[str, float | None]) -> None:
        self.power_w = power_w
        self.provenance = {d: "nvml-energy-counter" for d in power_w}
        self.warnings: list[str] = []

    def to_record(self) -> dict[str, Any]:
        return {"idle_baseline_s": 5.0, **{f"idle_{d}_power_w": v for d, v in self.power_w.items()}}


def test_window_fields_gpu_sum_provenance_and_net() -> None:
    w = Window("w", "cuda:0", 10.0, 12.0, _m({"gpu0": 500.0, "cpu_package0": 60.0}, {"gpu0": "nvml-energy-counter", "cpu_package0": "rapl"}), {"mean_gpu0_power_w": 249.0}, _Baseline({"gpu0": 50.0}))
    rec = w.fields()
    assert isinstance(rec, Record)
    assert rec["energy_j"] == 500.0 and rec["mean_power_w"] == 250.0 and rec["energy_net_j"] == 400.0
    assert rec["gpu0_energy_j"] == 500.0 and rec["cpu_package0_energy_j"] == 60.0
    assert rec["mean_gpu0_power_w"] == 249.0 and rec["idle_gpu0_power_w"] == 50.0
    assert rec.provenance["energy_j"] == "nvml-energy-counter"
    assert rec.provenance["mean_power_w"] == "nvml-energy-counter"
    assert rec.provenance["energy_net_j"] == "nvml-energy-counter (minus idle baseline)"
    # sampled power is labeled as the sampler's, idle power as the baseline's (never unlabeled)
    assert rec.provenance["mean_gpu0_power_w"] == "sampler (mean of periodic power readings)"
    assert rec.provenance["idle_gpu0_power_w"] == "nvml-energy-counter (idle baseline)"
    assert rec.reasons == {}


def test_window_fields_prefix_goes_after_the_statistic() -> None:
    w = Window("w", "cpu", 0.0, 2.0, _m({"cpu_package0": 10.0}, {"cpu_package0": "rapl"}), {"mean_cpu_package_power_w": 4.5, "sample_count": 3})
    rec = w.fields("steady_")
    assert sorted(rec) == ["mean_steady_cpu_package_power_w", "mean_steady_power_w", "steady_cpu_package0_energy_j",
                           "steady_energy_j", "steady_energy_net_j", "steady_sample_count", "steady_time_s"]
    assert rec["mean_steady_power_w"] == 5.0 and rec["mean_steady_cpu_package_power_w"] == 4.5
    assert rec.reasons == {"steady_energy_net_j": "no idle baseline (set --idle-baseline SECONDS > 0)"}


def test_window_fields_missing_domain_reason_and_merge() -> None:
    bad = Window("a", "cuda:0", 0.0, 1.0, _m({"gpu0": None}, {"gpu0": "not-measured"}, ["gpu0: window 0.05 s shorter than the counter's 0.1 s update"]))
    good = Window("b", "cpu", 0.0, 2.0, _m({"cpu_package0": 10.0}, {"cpu_package0": "rapl"}))
    rec = Record().merge(bad.fields("prefill_")).merge(good.fields("decode_"))
    out = finalize_record(rec, {"batch": 4}, "batch=4", 7)
    reasons = json.loads(out["null_reasons"])
    prov = json.loads(out["provenance"])
    assert out["prefill_energy_j"] is None and out["decode_energy_j"] == 10.0 and out["mean_decode_power_w"] == 5.0
    assert reasons["prefill_energy_j"] == "domain(s) gpu0 not measured: gpu0: window 0.05 s shorter than the counter's 0.1 s update"
    assert reasons["mean_prefill_power_w"] == reasons["prefill_energy_j"]  # derived: the source's reason
    assert reasons["prefill_gpu0_energy_j"].startswith("gpu0: window")
    assert prov == {"mean_decode_power_w": "rapl", "decode_cpu_package0_energy_j": "rapl", "decode_energy_j": "rapl"}
    assert out["warnings"] == "gpu0: window 0.05 s shorter than the counter's 0.1 s update"
    assert not any(k.startswith("_") for k in out)


def test_finalize_record_refuses_magic_keys() -> None:
    with pytest.raises(TypeError, match=r"record keys _reasons: build the record with charbench.record.Record"):
        finalize_record({"x_ms": None, "_reasons": {"x_ms": "why"}}, {}, "k", 0)


def test_window_without_meter() -> None:
    rec = Window("w", "cpu", 0.0, 1.0).fields()
    assert rec["energy_j"] is None and rec["mean_power_w"] is None
    assert rec.reasons["energy_j"] == "no energy meter usable for this device (see `charbench env`, meters)"
    assert rec.reasons["mean_power_w"] == rec.reasons["energy_j"]


def test_finalize_record_nan_and_protected_keys() -> None:
    out = finalize_record({"point_key": "evil", "point_index": 99, "x_ms": float("nan"), "y_ms": float("inf"), "z_j": None, "ok_s": 1.5}, {"a": 1}, "a=1", 0)
    assert out["point_key"] == "a=1" and out["point_index"] == 0 and out["a"] == 1
    assert out["x_ms"] is None and out["y_ms"] is None and out["ok_s"] == 1.5
    reasons = json.loads(out["null_reasons"])
    assert reasons == {"x_ms": "not a finite number (nan)", "y_ms": "not a finite number (inf)", "z_j": "not measured"}


# -- on a real NVIDIA GPU (pytest -m gpu) ----------------------------------------------------

def _cuda_or_skip() -> Any:
    from charbench.device import probe_torch_cuda
    from charbench.measure.nvml import nvml_available

    if not probe_torch_cuda().ok or not nvml_available()[0]:
        pytest.skip("needs a CUDA GPU with NVML")
    import torch

    return torch


class Matmul(Study):
    """bf16 matmuls for ~0.5 s per point; optionally locks the SM clock, then Ctrl-C."""

    name = "matmul"

    def __init__(self, lock_then_interrupt: int | None = None) -> None:
        self.cfg = ToyConfig(n=2)
        self.lock = lock_then_interrupt

    def points(self) -> list[dict[str, Any]]:
        return expand({"n": [4096, 8192]})

    def run_point(self, params: dict[str, Any], ctx: Context) -> dict[str, Any]:
        import torch

        if self.lock is not None:
            ctx.control.lock_sm_clock(self.lock)
            raise KeyboardInterrupt
        a = torch.randn(params["n"], params["n"], device=ctx.device, dtype=torch.bfloat16)
        a @ a  # warm-up, discarded
        with ctx.window("mm") as w:
            loop = ctx.timer.run_for_at_least(lambda: a @ a, 0.5)
        return w.fields().set("iteration_count", loop.iterations)


@pytest.mark.gpu
def test_cuda_run_measures_gpu_energy(charbench_home: Path) -> None:
    _cuda_or_skip()
    res = run_study(Matmul(), CommonOptions(out=charbench_home, device="cuda:0"), RunSettings(idle_baseline_s=1.0, sample_interval_s=0.05))
    recs = RunStore.open(res.run_dir).records()
    assert res.status == "completed" and len(recs) == 2
    for r in recs:
        prov = json.loads(r["provenance"])
        assert r["energy_j"] is not None and r["energy_j"] > 0, r["null_reasons"]
        assert prov["energy_j"] in ("nvml-energy-counter", "nvml-power-integrated")
        assert 50 < r["mean_power_w"] < 1500
        assert r["energy_net_j"] is not None and r["energy_net_j"] < r["energy_j"]
        assert r["gpu0_energy_j"] == r["energy_j"] and r["idle_gpu0_power_w"] > 0
        assert r.get("mean_gpu0_power_w") is not None and r.get("mean_gpu0_sm_clock_mhz") is not None
    samples = pd.read_parquet(res.run_dir / "samples.parquet")
    assert samples["gpu0_power_w"].notna().sum() > 5
    env = json.loads((res.run_dir / "env.json").read_text())
    assert env["gpus"] and env["device"] == "cuda:0"


@pytest.mark.gpu
def test_cuda_clock_lock_restored_after_ctrl_c(charbench_home: Path) -> None:
    torch = _cuda_or_skip()
    from charbench.measure.sampler import Sampler

    with pytest.raises(KeyboardInterrupt):
        run_study(Matmul(lock_then_interrupt=600), CommonOptions(out=charbench_home, device="cuda:0"), RunSettings(sample_interval_s=0))
    a = torch.randn(8192, 8192, device="cuda:0", dtype=torch.bfloat16)
    with Sampler(0.05, gpus=[0]) as sampler:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 1.0:
            a @ a
        torch.cuda.synchronize()
        t1 = time.perf_counter()
    stats = sampler.summarize(t0 + 0.3, t1)
    assert stats["mean_gpu0_sm_clock_mhz"] > 900, stats  # a lock left at 600 MHz would cap it


def test_study_gpus_hook_spans_meters_over_every_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from charbench import measure
    from charbench.measure.testing import FakeGpu, fake_nvml
    from charbench.study import Context

    real_timer = measure.Timer
    monkeypatch.setattr(measure, "Timer", lambda device: real_timer("cpu"))  # no CUDA here; NVML is faked

    store = RunStore.create(tmp_path, "toy", config={}, env={})
    gpus = [FakeGpu(uuid=f"GPU-{i}", pci_bus_id=f"00000000:{i + 1:02d}:00.0") for i in range(3)]
    with fake_nvml(gpus):
        ctx = Context("cuda:0", store, 0, RunSettings(sample_interval_s=0), print, gpus=[0, 1])
        assert ctx.gpus == [0, 1]
        assert [d for d in ctx.meter.domains() if d.startswith("gpu")] == ["gpu0", "gpu1"]
        single = Context("cuda:1", store, 0, RunSettings(sample_interval_s=0), print)
        assert single.gpus == [1]
        ctx.close()
        single.close()
    assert Study().gpus("cuda:0") is None
