"""Invariants of the cluster simulator (issue 12): completion, energy integral, KV, policy equivalences, determinism."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from charbench.errors import ConfigError
from charbench.sim import SimSettings, Workload, simulate
from charbench.sim.metrics import Costs, summarize
from charbench.sim.policies import PolicyConfig, load_policy_file, policy_class
from charbench.sim.profiles import ProfileRangeError, analytic_profile, interpolate, measured_profile
from charbench.sim.timeline import Bins


def _workload(n: int = 3000, duration: float = 600.0, seed: int = 0) -> Workload:
    rng = np.random.default_rng(seed)
    t = np.sort(rng.random(n) * duration)
    inp = np.clip(rng.lognormal(np.log(800), 1.0, n), 1, 3000).astype(np.int64)
    out = np.clip(rng.lognormal(np.log(150), 0.9, n), 1, 1000).astype(np.int64)
    return Workload(t, inp, out, duration, "test")


PROF = analytic_profile("h100", "llama-2-70b")
CFG = PolicyConfig(tp=8, instances=2)


def _run(name: str, cfg: PolicyConfig = CFG, wl: Workload | None = None, **settings: object):
    return simulate(PROF, wl or _workload(), policy_class(name)(PROF, cfg), SimSettings(**settings))


@pytest.mark.parametrize("name", ["static", "dynamollm", "polca", "greener"])
def test_every_request_finishes_exactly_once(name: str) -> None:
    res = _run(name)
    assert (res.finish_count == 1).all()
    assert np.isfinite(res.first_token_s).all() and (res.finish_s >= res.first_token_s).all() and (res.first_token_s > res.arrival_s).all()


def test_energy_equals_the_integral_of_power_and_the_bins() -> None:
    res = _run("dynamollm", record_segments=True, bin_s=7.0)
    seg = np.array([(t1 - t0) * p for _, t0, t1, p in res.segments])
    assert res.energy_j == pytest.approx(seg.sum(), rel=1e-12)
    data = res.bins.frame_data()
    assert data[-res.rows:].sum() == pytest.approx(res.energy_j, rel=1e-9)
    # segments of one instance never overlap and only cover its lifetime
    by_inst: dict[int, list[tuple[float, float]]] = {}
    for i, t0, t1, _ in res.segments:
        by_inst.setdefault(i, []).append((t0, t1))
    for spans in by_inst.values():
        assert all(a[1] <= b[0] + 1e-12 for a, b in zip(spans, spans[1:]))


def test_no_instance_exceeds_its_kv_capacity_under_pressure() -> None:
    small = dataclasses.replace(PROF.point(8, 1980), kv_capacity_tokens=8000)
    prof = dataclasses.replace(PROF, _builder=lambda tp, f: small)
    wl = _workload(1500, 120.0)
    res = simulate(prof, wl, policy_class("static")(prof, CFG), SimSettings())
    assert res.counters["preemption_count"] > 0  # the test exercises preemption
    assert 0 < res.max_kv_fraction <= 1.0
    assert (res.finish_count == 1).all()


def test_polca_without_a_reachable_cap_equals_static() -> None:
    a = _run("static")
    b = _run("polca", dataclasses.replace(CFG, polca_budget_w=1e12, polca_oversubscription=0.0))  # low-priority instances stay in the one pool
    assert np.array_equal(a.finish_s, b.finish_s) and np.array_equal(a.first_token_s, b.first_token_s)
    assert a.energy_j == b.energy_j and b.extra["throttle_events"] == 0 and b.counters["freq_change_count"] == 0


def test_dynamollm_with_one_pool_one_frequency_no_reconfiguration_equals_static() -> None:
    a = _run("static")
    cfg = dataclasses.replace(CFG, dyn_pools="single", dyn_tps=(8,), dyn_freqs_mhz=(1980.0,), cluster_period_s=0.0)
    b = _run("dynamollm", cfg)
    assert np.array_equal(a.finish_s, b.finish_s) and a.energy_j == b.energy_j
    assert b.counters == a.counters


def test_a_seeded_run_is_bit_identical() -> None:
    a, b = _run("dynamollm"), _run("dynamollm")
    assert np.array_equal(a.finish_s, b.finish_s) and a.energy_j == b.energy_j and np.array_equal(a.bins.frame_data(), b.bins.frame_data())


def test_dynamollm_lowers_frequency_and_polca_throttles_when_oversubscribed() -> None:
    d = _run("dynamollm")
    assert d.counters["freq_change_count"] > 0
    p = _run("polca", dataclasses.replace(CFG, polca_oversubscription=1.0, polca_budget_w=2 * 5600.0))
    assert p.extra["throttle_events"] > 0 and len(p.arrival_s) > 2900


def test_decode_macro_steps_match_single_iterations() -> None:
    """One request alone: TTFT = prefill chunks, E2E = TTFT + the arithmetic series of decode iterations."""
    op = PROF.point(8, 1980)
    wl = Workload(np.array([0.0]), np.array([100]), np.array([11]), 1.0)
    res = simulate(PROF, wl, policy_class("static")(PROF, dataclasses.replace(CFG, instances=1)), SimSettings())
    ttft = op.prefill_fixed_s + 100 * op.prefill_per_token_s
    assert res.ttft_s[0] == pytest.approx(ttft, rel=1e-12)
    dec = sum(op.decode_fixed_s + op.decode_per_seq_s + (101 + i) * op.decode_per_ctx_token_s for i in range(10))
    assert res.e2e_s[0] == pytest.approx(ttft + dec, rel=1e-12)


def test_a_hybrid_iteration_pays_the_fixed_cost_once() -> None:
    """A prompt arriving during a decode waits for the iteration in flight, then runs with it in one forward."""
    op = PROF.point(8, 1980)
    ttft0 = op.prefill_fixed_s + 100 * op.prefill_per_token_s
    t1 = ttft0 + 1e-4
    wl = Workload(np.array([0.0, t1]), np.array([100, 50]), np.array([11, 2]), 1.0)
    res = simulate(PROF, wl, policy_class("static")(PROF, dataclasses.replace(CFG, instances=1)), SimSettings())
    in_flight = op.decode_fixed_s + op.decode_per_seq_s + 101 * op.decode_per_ctx_token_s
    hybrid = 50 * op.prefill_per_token_s + max(op.prefill_fixed_s, op.decode_fixed_s) + op.decode_per_seq_s + 102 * op.decode_per_ctx_token_s
    assert res.ttft_s[1] == pytest.approx(ttft0 + in_flight + hybrid - t1, rel=1e-12)


def test_profile_frequency_model_and_range_errors() -> None:
    hi, lo = PROF.point(8, 1980), PROF.point(8, 1000)
    compute_hi = 2 * 69.0e9 / (8 * 989e12 * 0.5)  # the clock-scaled part of a prefill token (NVLink time is not)
    # the clock-bound share (prefill_clock_bound_share 0.5) of a prefill scales ~ 1/f
    assert lo.prefill_per_token_s - hi.prefill_per_token_s == pytest.approx(compute_hi * 0.98 * 0.5, rel=1e-9)
    assert lo.decode_fixed_s < hi.decode_fixed_s * 1.15  # memory-bound nearly flat
    assert lo.prefill_w < hi.prefill_w
    with pytest.raises(ProfileRangeError, match=r"profile h100: sm_freq_mhz 2100 is outside the profile's range \[800, 1980\] MHz"):
        PROF.point(8, 2100)
    with pytest.raises(ProfileRangeError, match=r"profile h100: tp 1 is not covered \(covered: 2, 4, 8\); choose one of them"):
        PROF.point(1, 1980)
    with pytest.raises(ConfigError, match=r"--profile: unknown GPU 'v100'; valid: a100, h100, h200, or a profile file \(.json/.csv\)"):
        analytic_profile("v100", "llama-2-70b")
    with pytest.raises(ProfileRangeError, match=r"profile t: f 3 is outside the table's range \[1, 2\]"):
        interpolate({1.0: {"x": 1.0}, 2.0: {"x": 3.0}}, 3.0, "f", "t")
    assert interpolate({1.0: {"x": 1.0}, 2.0: {"x": 3.0}}, 1.5, "f", "t") == {"x": 2.0}


def test_measured_profile_from_a_serve_sweep_export(tmp_path: Path) -> None:
    from charbench.profiles import write_profile

    def entry(freq: float, rps: float, e2el: float, tpot: float, power: float) -> dict:
        return {"model": "tiny", "tp": 1, "sm_freq_mhz": freq, "max_num_seqs": 16, "input_len": 64, "output_len": 32,
                "request_throughput_rps": rps, "median_e2el_ms": e2el, "median_tpot_ms": tpot, "median_ttft_ms": tpot + 64 * 0.5,
                "mean_power_w": power, "error_rate": 0.0, "provenance": {}}
    path = write_profile([entry(1000, 1.0, 1000, 20, 100), entry(1000, 4.0, 1000, 30, 140), entry(2000, 1.0, 1000, 10, 200),
                          entry(2000, 4.0, 1000, 16, 260)], tmp_path / "p.json")
    prof = measured_profile(path, kv_capacity_tokens=10_000)
    op = prof.point(1, 1000)
    # no open-loop rate in these entries: the closed-form fit; decode batch = rps x (E2E - TTFT) (Little's law)
    b_hi = 4.0 * (1000 - 62) / 1000
    slope = (30 - 20) / (b_hi - 1.0) / 1000
    assert op.decode_per_seq_s == pytest.approx(slope) and op.decode_fixed_s == pytest.approx(0.020 - slope)
    # one fixed cost per forward: a lone 64-token prompt's TTFT (the lightest load's, 52 ms) is decode_fixed + 64 x per-token
    assert op.prefill_fixed_s == op.decode_fixed_s and op.prefill_per_token_s == pytest.approx((0.052 - op.decode_fixed_s) / 64)
    assert op.max_batch == 16 and prof.power_measured
    assert prof.calibration["tp1@1000MHz"] == {"calibrated_entries": 0}
    mid = prof.point(1, 1500)
    assert mid.decode_base_w == pytest.approx((op.decode_base_w + prof.point(1, 2000).decode_base_w) / 2)
    with pytest.raises(ProfileRangeError, match=r"profile p.json: sm_freq_mhz 2500 is outside the profile's range \[1000, 2000\] MHz"):
        prof.point(1, 2500)


def test_measured_profile_calibration_recovers_a_known_engine(tmp_path: Path) -> None:
    """Entries made by simulating a known operating point: the calibrated profile reproduces their medians; no power -> NaN."""
    from charbench.profiles import write_profile
    from charbench.sim import calibrate

    truth = dataclasses.replace(PROF.point(8, 1980), tp=1, freq_mhz=0.0, prefill_fixed_s=4e-3, prefill_per_token_s=3e-4, decode_fixed_s=4e-3,
                                decode_per_seq_s=1.2e-3, decode_per_ctx_token_s=0.0, kv_capacity_tokens=1 << 30, max_batch=8)
    entries = []
    for i, rate in enumerate((3.0, 8.0, float("inf"))):
        e = {"request_rate_rps": rate, "input_len": 64, "output_len": 32}
        ttft, tpot, _ = calibrate._replay(truth, e, 8, 512, i)  # the calibration's own replay: the truth is an exact fit
        entries.append({"model": "tiny", "tp": 1, "sm_freq_mhz": None, "max_num_seqs": 8, "input_len": 64, "output_len": 32, "load_kind": "rate",
                        "request_rate_rps": "inf" if rate == float("inf") else rate, "request_throughput_rps": min(rate, 11.0),
                        "median_e2el_ms": (ttft + 31 * tpot) * 1000, "median_tpot_ms": tpot * 1000, "median_ttft_ms": ttft * 1000,
                        "mean_power_w": None, "error_frac": 0.0, "provenance": {}})
    prof = measured_profile(write_profile(entries, tmp_path / "known.json"), kv_capacity_tokens=1 << 20)
    cal = prof.calibration["tp1@0MHz"]
    assert cal["calibrated_entries"] == 3 and cal["max_abs_log_error"] < 0.02
    for row in cal["entries"]:
        assert row["simulated_median_tpot_ms"] == pytest.approx(row["measured_median_tpot_ms"], rel=0.02)
        if row["request_rate_rps"] != float("inf"):
            assert row["simulated_median_ttft_ms"] == pytest.approx(row["measured_median_ttft_ms"], rel=0.02)
    op = prof.point(1, 0.0)
    assert op.prefill_per_token_s == pytest.approx(3e-4, rel=0.05)
    assert op.decode_fixed_s == pytest.approx(4e-3, rel=0.1) and op.decode_per_seq_s == pytest.approx(1.2e-3, rel=0.1)
    assert not prof.power_measured and np.isnan(op.decode_base_w) and "not measured" in prof.provenance["power"]


def test_bins_integrate_spans_exactly() -> None:
    b = Bins(10.0, 1, 20.0)
    b.add_span(0, 5.0, 37.0, 2.0)
    assert b.frame_data()[0].tolist() == [10.0, 20.0, 20.0, 14.0]


def test_metrics_carbon_and_cost() -> None:
    res = _run("static")
    m = summarize(res, Costs(2.0, 0.1, 10.0, 0.5), lambda t: np.full(len(t), 400.0))
    assert m["carbon_kgco2e"] == pytest.approx(m["energy_kwh"] * 0.4, rel=1e-9)
    assert m["gpu_time_h"] == pytest.approx(16 * res.end_s / 3600) and m["cost_usd"] == pytest.approx(m["gpu_time_h"] * 10 + m["energy_kwh"] * 0.5)
    assert m["max_power_w"] >= m["p99_power_w"] >= m["p50_power_w"]


@pytest.fixture
def policy_registry() -> Any:
    """The policy registry, put back as it was afterwards (a plug-in must not leak into other tests)."""
    from charbench.sim.policies import POLICIES

    saved = dict(POLICIES)
    yield POLICIES
    POLICIES.clear()
    POLICIES.update(saved)


def test_a_policy_plugin_in_one_file(tmp_path: Path, policy_registry: Any) -> None:
    f = tmp_path / "mine.py"
    f.write_text("from charbench.sim.policies import Policy, register_policy\n\n@register_policy\nclass Half(Policy):\n    name = 'half-clock'\n"
                 "    def setup(self, sim):\n        for _ in range(self.cfg.instances):\n            sim.add_instance(0, self.cfg.tp, 1000.0)\n")
    assert load_policy_file(f) == ["half-clock"]
    res = _run("half-clock")
    assert (res.finish_count == 1).all()
    with pytest.raises(ConfigError, match=r"--policy-file .*empty.py: registers no policy; decorate a Policy subclass with @register_policy"):
        (tmp_path / "empty.py").write_text("x = 1\n")
        load_policy_file(tmp_path / "empty.py")


VIDUR_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "vidur" / "profiling_data" / "compute"


def _vidur_dataset(tmp_path: Path) -> Path:
    """A dataset folder in Vidur's layout with a small MLP table (two tp degrees, a roofline-like shape)."""
    import json as _json

    import pandas as pd

    from charbench.sim.profiles import VIDUR_LAYER_OPS

    snap = tmp_path / "datasets--local--vidur-llama-2-7b-a100" / "snapshots" / "0001"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text(_json.dumps({"model": "meta-llama/Llama-2-7b-hf", "device_sku": "a100"}))
    rows = []
    for tp in (1, 2):
        for n in (1, 64, 128, 256, 512, 1024, 2048):
            per_layer = max(0.3, 0.002 * n) / tp  # ms: flat (weight reads) then linear (compute)
            row = {f"time_stats.{op}.median": per_layer / len(VIDUR_LAYER_OPS) for op in VIDUR_LAYER_OPS}
            row.update({"time_stats.emb.median": 0.2, "num_tokens": n, "num_tensor_parallel_workers": tp})
            rows.append(row)
    pd.DataFrame(rows).to_csv(snap / "mlp.csv.xz", index=False, compression="xz")
    return snap.parent.parent


def test_vidur_mlp_profile_import(tmp_path: Path) -> None:
    from charbench.sim.profiles import resolve_profile, vidur_profile

    ds = _vidur_dataset(tmp_path)
    prof = resolve_profile(f"vidur:{ds}", "llama-2-70b")  # the dataset's model wins
    assert (prof.model, prof.gpu, prof.kind, prof.tps) == ("llama-2-7b", "a100", "vidur-measured", (1, 2))
    hi, lo = prof.point(1, 1410), prof.point(1, 810)
    # decode: flat 0.3 ms/layer up to 150 tokens then 0.002 n -> the <= 256-token fit; x 32 layers + emb; + 4 ms iteration overhead
    dec = [max(0.3, 0.002 * n) * 32 + 0.2 for n in (1, 64, 128, 256)]
    slope, icpt = np.polyfit([1, 64, 128, 256], dec, 1)
    assert hi.decode_fixed_s == pytest.approx(icpt / 1e3 + 0.004) and hi.decode_per_seq_s == pytest.approx(slope / 1e3)
    assert hi.prefill_per_token_s == pytest.approx(0.002 * 32 / 1e3) and hi.prefill_fixed_s == pytest.approx(0.2 / 1e3 + 0.004, abs=1e-9)
    # the clock-bound share (prefill_clock_bound_share 0.5) of a prefill token scales ~ 1/f
    assert lo.prefill_per_token_s == pytest.approx(hi.prefill_per_token_s * (0.5 * 1410 / 810 + 0.5))
    assert prof.point(2, 1410).prefill_per_token_s == pytest.approx(hi.prefill_per_token_s / 2, rel=1e-6)
    assert "Vidur MLP operator profile" in prof.provenance["measured"] and "estimated" in prof.provenance["power"]
    with pytest.raises(ConfigError, match=r"--profile .*nowhere: no mlp.csv.xz in this folder or its snapshots/\*/"):
        (tmp_path / "nowhere").mkdir()
        vidur_profile(tmp_path / "nowhere")
    wl = _workload(300, 60.0)
    res = simulate(prof, wl, policy_class("static")(prof, PolicyConfig(tp=1, instances=2)), SimSettings())
    assert (res.finish_count == 1).all()


@pytest.mark.skipif(not VIDUR_DATA.is_dir(), reason="../shared/vidur is not beside this checkout")
def test_vidur_shared_profiles_load() -> None:
    from charbench.sim.profiles import vidur_profile

    for ds in sorted(VIDUR_DATA.iterdir()):
        prof = vidur_profile(ds)
        op = prof.point(prof.tps[0], prof.max_freq_mhz)
        assert 0 < op.prefill_per_token_s < 1e-3 and 1e-3 < op.decode_fixed_s < 0.1, ds.name
