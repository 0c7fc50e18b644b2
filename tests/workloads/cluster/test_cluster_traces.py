"""Synthetic traces, carbon series and the comparison table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from charbench.errors import ConfigError
from charbench.workloads.cluster.analysis import comparison, polca_servers_gain
from charbench.workloads.cluster.traces import SyntheticSpec, carbon_intensity, synthetic_trace


def test_synthetic_trace_is_seeded_and_has_its_mean_rate() -> None:
    spec = SyntheticSpec(duration_s=7200, mean_rate_rps=10, peak_to_mean=1.0, burst_per_h=0)
    a, b = synthetic_trace(spec, 3), synthetic_trace(spec, 3)
    assert np.array_equal(a.arrival_s, b.arrival_s) and np.array_equal(a.input_len, b.input_len)
    assert len(a) / 7200 == pytest.approx(10, rel=0.03)
    assert float(np.median(a.input_len)) == pytest.approx(1020, rel=0.1)  # the published conversation median
    with pytest.raises(ConfigError, match=r"--length-dist: 'zipf' is not a published length distribution; use azure-conv or azure-code"):
        synthetic_trace(SyntheticSpec(length_dist="zipf"), 0)


def test_carbon_csv_is_a_step_function(tmp_path: Path) -> None:
    f = tmp_path / "ci.csv"
    f.write_text("time_s,g_per_kwh\n0,100\n1800,300\n")
    fn, src = carbon_intensity(f)
    assert fn(np.array([0.0, 1799.0, 1800.0, 9999.0])).tolist() == [100.0, 100.0, 300.0, 300.0] and "2 points" in src
    (tmp_path / "bad.csv").write_text("t,g\n0,1\n")
    with pytest.raises(ConfigError, match=r"--carbon-file .*bad.csv: needs columns time_s,g_per_kwh \(found: t, g\)"):
        carbon_intensity(tmp_path / "bad.csv")


def test_comparison_deltas_and_polca_gain() -> None:
    recs = [{"policy": "static", "energy_kwh": 10.0, "p99_ttft_ms": 100.0, "p99_tbt_ms": 50.0},
            {"policy": "dynamollm", "energy_kwh": 5.0, "p99_ttft_ms": 90.0, "p99_tbt_ms": 60.0},
            {"policy": "polca", "polca_oversubscription": 0.2, "energy_kwh": 11.0, "p99_ttft_ms": 104.0, "p99_tbt_ms": 51.0},
            {"policy": "polca", "polca_oversubscription": 0.4, "energy_kwh": 12.0, "p99_ttft_ms": 130.0, "p99_tbt_ms": 51.0}]
    t = comparison(recs)
    assert t["policy"].tolist() == ["static", "dynamollm", "polca+0.2", "polca+0.4"]
    assert t["energy_delta_pct"].tolist() == [0.0, -50.0, pytest.approx(10.0), pytest.approx(20.0)]
    assert polca_servers_gain(recs) == {"servers_gain_pct": 20.0, "basis": "static", "servers_gain_vs_static_pct": 20.0, "max_p99_loss_pct": 5.0}
    # with uncapped twins: the capping's own cost decides (0.4 loses 30% TTFT to static, 4% to its twin)
    recs[2].update(p99_uncapped_ttft_ms=100.0, p99_uncapped_tbt_ms=50.0)
    recs[3].update(p99_uncapped_ttft_ms=125.0, p99_uncapped_tbt_ms=50.0, polca_added_servers_frac=0.375)
    assert polca_servers_gain(recs) == {"servers_gain_pct": 37.5, "basis": "capping", "servers_gain_vs_static_pct": 20.0, "max_p99_loss_pct": 5.0}


def test_claims_direction() -> None:
    from charbench.workloads.cluster.analysis import claims_table

    recs = [{"policy": "static", "energy_kwh": 10.0, "carbon_kgco2e": 4.0, "cost_usd": 5.0, "slo_attainment_frac": 1.0, "p99_ttft_ms": 100.0, "p99_tbt_ms": 50.0},
            {"policy": "dynamollm", "energy_kwh": 8.0, "carbon_kgco2e": 4.2, "cost_usd": 4.0, "slo_attainment_frac": 0.989},
            {"policy": "polca", "polca_oversubscription": 0.1, "p99_ttft_ms": 104.0, "p99_tbt_ms": 51.0}]
    t = claims_table(recs).set_index("claim")
    dyn = t[t["paper"].str.startswith("DynamoLLM")]
    # -20% energy but 1.1 points of SLO attainment lost: not the paper's direction; carbon up; cost down
    assert dyn["same_direction"].tolist() == [False, False, True]
    assert t.loc["more servers in the same power budget", "simulated_pct"] == pytest.approx(10.0)
    assert t.loc["more servers in the same power budget", "same_direction"] == True  # noqa: E712
    assert t[t["paper"].str.startswith("Towards")]["same_direction"].isna().all()  # greener did not run
    recs[1]["slo_attainment_frac"] = 0.99
    assert claims_table(recs).iloc[0]["same_direction"] == True  # noqa: E712
