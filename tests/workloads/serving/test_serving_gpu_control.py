"""SM-frequency and power-limit knobs under a fake NVML: set, measured, restored on every path."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import pytest

from charbench.config import CommonOptions
from charbench.errors import CharbenchError
from charbench.measure.testing import FakeGpu, fake_nvml
from charbench.results import RunStore
from charbench.study import RunSettings, run_study
from charbench.workloads.serving.config import ServeSweepConfig
from charbench.workloads.serving.run import ServeSweepStudy

from .fakes import FakeTarget

DEFAULT_LIMIT_MW = 700_000


class WatchingTarget(FakeTarget):
    """Records the fake GPU's clock lock and power limit while requests run."""

    def __init__(self, gpu: FakeGpu, **kw: Any) -> None:
        super().__init__(**kw)
        self.gpu = gpu
        self.seen: list[tuple[Any, int]] = []

    async def send(self, rec, prompt, hooks) -> None:  # type: ignore[no-untyped-def]
        self.seen.append((self.gpu.locked_clocks_mhz, self.gpu.power_limit_mw))
        await super().send(rec, prompt, hooks)


@pytest.fixture
def gpu_env(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """A fake H100 whose energy counter advances at 300 W; the run's device is cuda:0."""
    from charbench.measure.timer import Timer

    t0 = time.perf_counter()
    gpu = FakeGpu(energy_mj=lambda: int(1_000_000 + (time.perf_counter() - t0) * 300_000))
    monkeypatch.setattr("charbench.device.resolve_device", lambda spec: "cuda:0")
    monkeypatch.setattr("charbench.measure.Timer", lambda device, *a, **k: Timer("cpu"))
    with fake_nvml([gpu]):
        yield gpu


def _cfg(**kw: Any) -> ServeSweepConfig:
    base = dict(request_rate_rps=[math.inf], max_num_seqs=[4], input_len=[8], output_len=[40], num_requests=12,
                warmup_requests=0, sm_freq_mhz=[1200, 1500], power_limit_w=[300.0])
    base.update(kw)
    return ServeSweepConfig(**base)


def _run(tmp_path: Path, cfg: ServeSweepConfig, factory, **common: Any):  # type: ignore[no-untyped-def]
    return run_study(ServeSweepStudy(cfg, target_factory=factory), CommonOptions(out=tmp_path / "runs", device="cuda", **common),
                     RunSettings(sample_interval_s=0.05, idle_baseline_s=0.2))


def _assert_restored(gpu: FakeGpu) -> None:
    assert gpu.locked_clocks_mhz is None
    assert gpu.power_limit_mw == DEFAULT_LIMIT_MW


def test_set_measured_and_restored_on_success(tmp_path: Path, gpu_env: FakeGpu) -> None:
    targets: list[WatchingTarget] = []

    def factory(knobs: dict[str, Any], device: str) -> WatchingTarget:
        targets.append(WatchingTarget(gpu_env, max_num_seqs=knobs["max_num_seqs"], step_s=0.004))
        return targets[-1]

    res = _run(tmp_path, _cfg(), factory)
    assert res.status == "completed" and res.points_done == 2
    seen = {s for t in targets for s in t.seen}
    assert seen == {((1200, 1200), 300_000), ((1500, 1500), 300_000)}  # set while the load ran
    _assert_restored(gpu_env)
    recs = RunStore.open(res.run_dir).records()
    for r in recs:
        assert r["sm_clock_locked_mhz"] == r["sm_freq_mhz"] and r["power_limit_enforced_w"] == 300.0
        assert r["mean_gpu0_sm_clock_mhz"] is not None  # the sampler's measured clock is in the record
        # energy from the (fake) counter: ~300 W over the load and over its steady window
        assert r["mean_power_w"] == pytest.approx(300.0, rel=0.1)
        assert r["steady_energy_j"] > 0 and r["mean_steady_power_w"] == pytest.approx(300.0, rel=0.15)
        assert r["energy_per_output_token_j"] > 0 and r["steady_output_per_energy_tok_j"] > 0
        assert "nvml" in json.loads(r["provenance"])["energy_j"]
    # the report draws the counter's energy per token (Pareto) and the sampler's power and clock timeline
    from charbench.workloads.serving.profile import energy_per_token
    from report_content import close, report_content, trace_xy

    assert (res.run_dir / "report.html").is_file()
    content = report_content(res.run_dir)
    pareto = next(fig for fig in content.figures if any(t.name == "Pareto frontier" for t in fig.data))
    assert close(trace_xy(pareto, "loads")[1], [energy_per_token(r)[0] for r in recs])
    timeline = content.figure_with_trace("gpu0_power_w")
    samples = RunStore.open(res.run_dir).samples_frame()
    x, y = trace_xy(timeline, "gpu0_power_w")
    assert close(y, list(samples["gpu0_power_w"])) and close(x, list(samples["t_s"] - samples["t_s"].min()))
    # each load's window and its steady window are shaded (on every row; the first row's shapes checked)
    t0 = samples["t_s"].min()
    shaded = [v for sh in timeline.layout.shapes if sh.xref == "x" for v in (sh.x0, sh.x1)]
    assert close(shaded, [r[k] - t0 for r in recs for k in ("point_t0_s", "point_t1_s", "steady_t0_s", "steady_t1_s")])


def test_restored_after_a_failed_point(tmp_path: Path, gpu_env: FakeGpu) -> None:
    def factory(knobs: dict[str, Any], device: str) -> FakeTarget:
        return FakeTarget(max_num_seqs=4, dead=True)

    with pytest.raises(CharbenchError, match="served no request"):
        _run(tmp_path, _cfg(), factory)
    _assert_restored(gpu_env)


def test_restored_after_ctrl_c(tmp_path: Path, gpu_env: FakeGpu) -> None:
    locked_during: list[Any] = []

    class Boom(FakeTarget):
        async def send(self, rec, prompt, hooks) -> None:  # type: ignore[no-untyped-def]
            locked_during.append(gpu_env.locked_clocks_mhz)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, _cfg(), lambda k, d: Boom(max_num_seqs=4))
    assert locked_during and locked_during[0] == (1200, 1200)
    _assert_restored(gpu_env)
    store = RunStore.open(next((tmp_path / "runs" / "serve-sweep").iterdir()))
    assert store.meta["status"] == "interrupted"


def test_points_without_the_knob_run_at_default_settings(tmp_path: Path, gpu_env: FakeGpu) -> None:
    targets: list[WatchingTarget] = []

    def factory(knobs: dict[str, Any], device: str) -> WatchingTarget:
        targets.append(WatchingTarget(gpu_env, max_num_seqs=4))
        return targets[-1]

    res = _run(tmp_path, _cfg(sm_freq_mhz=[1200], power_limit_w=[]), factory)
    assert {s for t in targets for s in t.seen} == {((1200, 1200), DEFAULT_LIMIT_MW)}
    _assert_restored(gpu_env)
    assert res.status == "completed"


def test_out_of_range_frequency_fails_the_point_with_the_range(tmp_path: Path, gpu_env: FakeGpu) -> None:
    res = _run(tmp_path, _cfg(sm_freq_mhz=[5000], power_limit_w=[]), lambda k, d: FakeTarget(max_num_seqs=4), continue_on_error=True)
    fail = RunStore.open(res.run_dir).failures()[0]
    assert "--sm-freq 5000 MHz is outside" in fail["message"]
    _assert_restored(gpu_env)


def test_tp_sweep_baseline_spans_every_gpu_so_each_point_has_net_energy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from charbench.measure.timer import Timer

    t0 = time.perf_counter()
    gpus = [FakeGpu(uuid=f"GPU-{i}", pci_bus_id=f"00000000:{i + 1:02d}:00.0",
                    energy_mj=lambda: int(1_000_000 + (time.perf_counter() - t0) * 300_000)) for i in range(2)]
    monkeypatch.setattr("charbench.device.resolve_device", lambda spec: "cuda:0")
    monkeypatch.setattr("charbench.measure.Timer", lambda device, *a, **k: Timer("cpu"))
    cfg = _cfg(tp=[1, 2], sm_freq_mhz=[], power_limit_w=[])
    with fake_nvml(gpus):
        res = _run(tmp_path, cfg, lambda knobs, device: FakeTarget(max_num_seqs=knobs["max_num_seqs"], step_s=0.004))
    baseline = json.loads((res.run_dir / "baseline.json").read_text())
    assert {"gpu0", "gpu1"} <= set(baseline["power_w"])
    recs = {r["tp"]: r for r in RunStore.open(res.run_dir).records()}
    assert set(recs) == {1, 2}
    assert recs[1].get("gpu1_energy_j") is None and recs[2]["gpu1_energy_j"] is not None  # tp=1 meters gpu0 only
    for tp, rec in recs.items():
        assert rec["energy_j"] is not None and rec["energy_net_j"] is not None, (tp, rec["null_reasons"])
    # tp=2 sums both GPUs: about twice tp=1's power (both fake GPUs draw 300 W)
    assert recs[2]["mean_power_w"] == pytest.approx(600.0, rel=0.1)
    assert recs[1]["mean_power_w"] == pytest.approx(300.0, rel=0.1)
