"""The naming rule and the record builder (charbench.record), and every key both quick studies write."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from charbench import measure
from charbench.compare.columns import UNIT_SUFFIXES
from charbench.config import CommonOptions
from charbench.measure.testing import FakePowercap
from charbench.record import MACHINE_COLUMNS, UNITS, MetricNameError, Record, parse_metric, with_prefix
from charbench.results import RunStore
from charbench.study import RunSettings, finalize_record, run_study


# -- the naming rule ------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "parts"), [
    ("p99_ttft_ms", ("p99", "ttft", "ms")),
    ("mean_gpu0_power_w", ("mean", "gpu0_power", "w")),
    ("p95_gpu0_power_w", ("p95", "gpu0_power", "w")),
    ("energy_net_per_gemm_j", (None, "energy_net_per_gemm", "j")),
    ("energy_net_per_request_j", (None, "energy_net_per_request", "j")),
    ("output_throughput_tok_s", (None, "output_throughput", "tok_s")),  # the longest unit wins, not "s"
    ("output_per_energy_net_tok_j", (None, "output_per_energy_net", "tok_j")),
    ("total_input_tokens", ("total", "input", "tokens")),
    ("mean_steady_power_w", ("mean", "steady_power", "w")),
    ("time_s", (None, "time", "s")),
    ("max_gpu0_temp_c", ("max", "gpu0_temp", "c")),
])
def test_parse_metric(name: str, parts: tuple[str | None, str, str]) -> None:
    assert parse_metric(name) == parts


def test_parse_metric_refuses_names_off_the_rule() -> None:
    with pytest.raises(MetricNameError, match=r"^metric 'iterations' does not end in a unit \(_bits, _bytes, _c, "):
        parse_metric("iterations")
    with pytest.raises(MetricNameError, match=r"^metric 'p99_ms' has no quantity between its statistic and unit; e.g. p99_ttft_ms$"):
        parse_metric("p99_ms")
    # the old spellings had their statistic in the middle: they parse, but not as a statistic
    assert parse_metric("gpu0_power_mean_w")[0] is None


def test_with_prefix_goes_after_the_statistic() -> None:
    assert with_prefix("mean_power_w", "steady_") == "mean_steady_power_w"
    assert with_prefix("energy_j", "steady_") == "steady_energy_j"
    assert with_prefix("gpu0_power_kind", "steady_") == "steady_gpu0_power_kind"
    assert with_prefix("p99_ttft_ms", "") == "p99_ttft_ms"


def test_every_unit_has_a_compare_direction() -> None:
    # compare decides "which way is better" by the unit: no unit of the rule may be unknown there
    assert sorted(u for u in UNITS if f"_{u}" not in UNIT_SUFFIXES) == []


# -- the record builder ---------------------------------------------------------------------

def test_derive_inherits_the_first_missing_reason_and_the_provenance() -> None:
    rec = Record().set("energy_j", 12.0, "rapl").null("energy_net_j", "no idle baseline").set("iteration_count", 4)
    rec.derive("energy_per_gemm_j", lambda e, n: e / n, "energy_j", "iteration_count", formula="per GEMM")
    rec.derive("energy_net_per_gemm_j", lambda e, n: e / n, "energy_net_j", "iteration_count")
    rec.derive("energy_per_nothing_j", lambda e: e, "never_written_j")
    assert (rec["energy_per_gemm_j"], rec.provenance["energy_per_gemm_j"]) == (3.0, "rapl (per GEMM)")
    assert rec["energy_net_per_gemm_j"] is None and rec.reasons["energy_net_per_gemm_j"] == "no idle baseline"
    assert rec.reasons["energy_per_nothing_j"] == "never_written_j was not recorded"
    assert "energy_net_per_gemm_j" not in rec.provenance


def test_derive_from_an_estimated_source_is_estimated() -> None:
    rec = Record().set("energy_j", 10.0, "rapl").set("power_estimated_w", 5.0, "estimated: fitted power model")
    rec.derive("energy_over_power_s", lambda e, p: e / p, "energy_j", "power_estimated_w", formula="energy / power")
    assert rec.provenance["energy_over_power_s"] == "estimated: fitted power model (energy / power)"
    rec.derive("zero_division_s", lambda e: None, "energy_j", reason="no tokens")
    assert rec["zero_division_s"] is None and rec.reasons["zero_division_s"] == "no tokens"


def test_merge_set_and_finalize_keep_reasons_provenance_and_warnings() -> None:
    a = Record().set("energy_j", 1.0, "nvml").warn("clock throttled")
    b = Record().null("steady_energy_j", "no steady state").set("request_rate_rps", math.inf, allow_inf=True)
    a.merge(b).merge({"mode_step": "grid"})
    a.set("energy_j", None, reason="the meter failed")  # a later null replaces the value and drops its provenance
    assert a.to_dict() == {"energy_j": None, "steady_energy_j": None, "request_rate_rps": math.inf, "mode_step": "grid"}
    out = finalize_record(a, {"batch": 2}, "batch=2", 0)
    assert json.loads(out["null_reasons"]) == {"energy_j": "the meter failed", "steady_energy_j": "no steady state"}
    assert json.loads(out["provenance"]) == {} and out["warnings"] == "clock throttled"
    assert out["request_rate_rps"] == math.inf  # the knob's own value, not a null


# -- every key both quick studies write -----------------------------------------------------

#: knobs (their CLI names) and descriptors that are not metrics
KNOBS = {
    "dtype", "backend", "experiment", "param", "value", "seed", "repeat", "m", "n", "k", "alpha", "b_layout", "kernel_layout",
    "device_name", "model", "tp", "max_num_seqs", "input_len", "output_len", "request_rate_rps", "concurrency", "mode_step",
    "load_kind", "offered_load", "arrival", "burstiness", "max_concurrency", "length_dist", "truncated", "target", "target_kind",
    "engine_model", "engine_device", "engine_weights", "max_model_len", "workload_class", "prompt_format", "prompt_tokens_exact",
    "requests_file", "slo_search_best", "slo_search_note", "max_duration_s",
    "generator", "accumulate", "accumulator", "fill_order",  # gemm-power: input generator, accumulation knob, what ran, sort axis
}
#: the runner's bookkeeping columns
BOOKKEEPING = {"point_key", "point_index", "null_reasons", "provenance", "warnings", "completed_at"}
#: per-GPU/CPU labels the sampler writes (text, not numbers)
LABEL = re.compile(r"^(steady_)?gpu\d+_(power_kind|throttle_reasons)$")


def _load_fakes() -> Any:
    path = Path(__file__).parent / "workloads" / "serving" / "fakes.py"
    spec = importlib.util.spec_from_file_location("charbench_test_serving_fakes", path)
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = mod  # type: ignore[union-attr]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def _gemm_records(home: Path) -> list[dict[str, Any]]:
    from charbench.workloads.gemm_power.config import GemmPowerConfig, resolve
    from charbench.workloads.gemm_power.run import GemmPowerStudy

    cfg = resolve(GemmPowerConfig(experiments=["sigma"], size=[32, 32, 32], cpu_duration_s=0.02), "cpu")
    res = run_study(GemmPowerStudy(cfg, "cpu"), CommonOptions(out=home, device="cpu"), RunSettings(sample_interval_s=0.01, idle_baseline_s=0.05))
    return RunStore.open(res.run_dir).records()


def _serving_records(home: Path) -> list[dict[str, Any]]:
    from charbench.workloads.serving.config import ServeSweepConfig
    from charbench.workloads.serving.run import ServeSweepStudy

    fakes = _load_fakes()
    cfg = ServeSweepConfig(request_rate_rps=[math.inf, 40.0], max_num_seqs=[2], input_len=[8], output_len=[6], num_requests=8,
                           warmup_requests=1, slo_ttft_ms=200.0)
    study = ServeSweepStudy(cfg, target_factory=lambda knobs, device: fakes.FakeTarget(max_num_seqs=knobs["max_num_seqs"]))
    res = run_study(study, CommonOptions(out=home, device="cpu"), RunSettings(sample_interval_s=0.01, idle_baseline_s=0.05))
    return RunStore.open(res.run_dir).records()


def _off_the_rule(records: list[dict[str, Any]]) -> list[str]:
    keys = {k for r in records for k in r} | {k for r in records for k in json.loads(r["null_reasons"])}
    bad = []
    for k in sorted(keys - KNOBS - BOOKKEEPING - MACHINE_COLUMNS):  # the runner's machine state: context, not metrics
        if LABEL.match(k):
            continue
        try:
            parse_metric(k)
        except MetricNameError:
            bad.append(k)
    return bad


@pytest.mark.parametrize("meter", ["rapl", "none"])
def test_every_key_both_studies_write_follows_the_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, meter: str) -> None:
    """Measured (a fake RAPL tree) and not measured (no meter): no key off the naming rule, in either branch."""
    real = measure.make_meters
    if meter == "rapl":
        pc = FakePowercap(tmp_path / "powercap")
        pc.add_standard()
        monkeypatch.setattr(measure, "make_meters", lambda device, gpus=None: real(device, gpus, rapl_root=pc.root))
    else:
        monkeypatch.setattr(measure, "make_meters", lambda device, gpus=None: real(device, gpus, rapl_root=tmp_path / "no-rapl"))
    gemm, serving = _gemm_records(tmp_path / "g"), _serving_records(tmp_path / "s")
    assert _off_the_rule(gemm) == [] and _off_the_rule(serving) == []
    # one name per concept across the studies; no old spelling survives
    written = {k for r in gemm + serving for k in r}
    assert {"energy_net_per_gemm_j", "mean_power_w", "energy_net_per_request_j", "mean_steady_power_w"} <= written
    assert not written & {"energy_per_gemm_net_j", "avg_power_w", "steady_avg_power_w", "rate_kind", "completed", "iterations"}
    if meter == "rapl":
        assert all(r["energy_j"] is not None and r["energy_net_j"] is not None for r in gemm)
        assert all(json.loads(r["provenance"])["energy_per_gemm_j"] == "rapl (per GEMM)" for r in gemm)
    else:
        for r in gemm:
            reasons = json.loads(r["null_reasons"])
            assert r["energy_per_gemm_j"] is None and reasons["energy_per_gemm_j"] == reasons["energy_j"]
    assert sorted(r["request_rate_rps"] for r in serving) == [40.0, math.inf]
