"""Power model: the fit recovers known coefficients; LOO error; calibration round trip; swings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from charbench.errors import ConfigError
from charbench.workloads.gemm_power import analysis as A

TRUE = {"intercept_w": 150.0, "toggle_w": 300.0, "hamming_w": 40.0, "zero_w": -60.0}
EXPS = ["sigma", "sparsity", "sort-rows", "bits-low", "unique"]


def _synthetic(noise_w: float = 0.0, seed: int = 0, dtype: str = "fp16") -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(60):
        t, h, z = rng.uniform(0, 0.5), rng.uniform(0.2, 0.6), rng.uniform(0, 1)
        p = TRUE["intercept_w"] + TRUE["toggle_w"] * t + TRUE["hamming_w"] * h + TRUE["zero_w"] * z + rng.normal(0, noise_w)
        rows.append({"device_name": "GPU X", "dtype": dtype, "backend": "torch", "experiment": EXPS[i % 5], "value": float(i),
                     "toggle_k_frac": t, "hamming_frac": h, "zero_operand_frac": z, "mean_power_w": p, "m": 64, "n": 64, "k": 64})
    return pd.DataFrame(rows)


def test_fit_recovers_known_coefficients_exactly() -> None:
    models, notes = A.fit_power_models(_synthetic())
    assert notes == [] and len(models) == 1
    m = models[0]
    for k, v in TRUE.items():
        assert m.coefficients()[k] == pytest.approx(v, abs=1e-6)
    assert m.r2 == pytest.approx(1.0)
    assert m.loo_mae_w == pytest.approx(0.0, abs=1e-6)
    assert m.rank == 4 and m.n_points == 60 and m.experiments == sorted(EXPS)


def test_fit_with_noise_is_close_and_loo_error_matches_the_noise() -> None:
    m = A.fit_power_models(_synthetic(noise_w=2.0, seed=1))[0][0]
    assert m.coefficients()["toggle_w"] == pytest.approx(300, rel=0.05)
    assert m.coefficients()["zero_w"] == pytest.approx(-60, rel=0.15)
    assert 0.95 < m.r2 < 1.0
    assert 1.0 < m.loo_mae_w < 3.0  # ~ mean |N(0, 2)| = 1.6 W


def test_loo_needs_two_experiments() -> None:
    x = np.random.default_rng(0).uniform(size=(10, 3))
    mae, mape, per = A.loo_experiment_error(x, x.sum(axis=1), ["one"] * 10)
    assert mae is None and mape is None and per == {}


def test_no_power_means_no_fit() -> None:
    df = _synthetic().assign(mean_power_w=None)
    models, notes = A.fit_power_models(df)
    assert models == [] and notes == ["no power data to fit: power was not measured on this machine"]


def test_too_few_points_are_noted() -> None:
    models, notes = A.fit_power_models(_synthetic().head(3))
    assert models == [] and "only 3 point(s)" in notes[0]


def test_calibration_round_trip_and_predict(tmp_path: Path) -> None:
    models, _ = A.fit_power_models(pd.concat([_synthetic(), _synthetic(dtype="bf16")]))
    path = A.save_calibration(models, tmp_path / "cal.json", source="run-1")
    cal = A.load_calibration(path)
    assert cal.source_run == "run-1" and {m.dtype for m in cal.models} == {"fp16", "bf16"}
    feats = {"toggle_k_frac": 0.25, "hamming_frac": 0.5, "zero_operand_frac": 0.1}
    watts, note = A.predict_power(cal, "fp16", "torch", feats)
    assert watts == pytest.approx(150 + 75 + 20 - 6)
    assert note.startswith("estimated: calibration cal.json (GPU X, fp16, torch")
    watts, note = A.predict_power(cal, "fp16", "triton", feats)
    assert watts is not None and "standing in for triton" in note
    watts, note = A.predict_power(cal, "fp32", "torch", feats)
    assert watts is None and note == "calibration cal.json has no model for dtype fp32 (it has: bf16/torch, fp16/torch)"


def test_load_calibration_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="calibration file not found"):
        A.load_calibration(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        A.load_calibration(bad)
    bad.write_text(json.dumps({"format": "other"}))
    with pytest.raises(ConfigError, match="not a gemm-power calibration"):
        A.load_calibration(bad)


def test_largest_swings() -> None:
    df = _synthetic()
    sw = A.largest_swings(df, "mean_power_w")
    assert len(sw) == 1
    row = sw.iloc[0]
    assert row["max"] == pytest.approx(df["mean_power_w"].max()) and row["min"] == pytest.approx(df["mean_power_w"].min())
    assert row["swing_pct"] == pytest.approx(100 * (row["max"] - row["min"]) / row["max"])
    assert A.largest_swings(df, "no_such_column").empty


def test_paper_numbers_ship_with_a_citation() -> None:
    p = A.paper_a100()
    assert "arXiv:2409.18324" in p["citation"]
    assert "commit 2987094" in p["source"]
    # facts from the release's traces (a100_expt_results, GPUTL >= 90, mean over seeds 1-10)
    fp16t = p["dtypes"]["fp16"]
    assert (fp16t["baseline_w"], fp16t["lowest_w"], fp16t["lowest_at"]) == (297.4, 173.4, "sorted-sparsity=1")
    assert [p["dtypes"][d]["swing_maxmin_pct"] for d in ("fp16", "fp16-simt", "fp32", "int8")] == [42.1, 36.3, 36.2, 36.3]
    assert [p["dtypes"][d]["swing_paper_pct"] for d in ("fp16", "fp16-simt", "fp32", "int8")] == [41.7, 23.6, 34.1, 35.4]
    assert p["trends"]["sort-rows"]["fp16"][-1][0] == 1.0


def test_headline_uses_the_papers_definition_and_the_runs_noise() -> None:
    import pandas as pd

    rows = []
    for seed, noise in ((1, 0.0), (2, 2.0)):
        rows += [{"dtype": "fp16", "backend": "torch", "experiment": "baseline", "value": 0.0, "seed": seed, "mean_power_w": 300.0 + noise},
                 {"dtype": "fp16", "backend": "torch", "experiment": "sparsity", "value": 1.0, "seed": seed, "mean_power_w": 200.0 + noise},
                 {"dtype": "fp16", "backend": "torch", "experiment": "sigma", "value": 4.0, "seed": seed, "mean_power_w": 320.0 + noise},
                 {"dtype": "int8", "backend": "non-gemm", "experiment": "idle", "value": 0.0, "seed": seed, "mean_power_w": 50.0}]
    h = A.headline(pd.DataFrame(rows), "mean_power_w").set_index("dtype")
    r = h.loc["fp16"]
    assert (r["baseline"], r["lowest"], r["at_lowest"], r["highest"]) == (301.0, 201.0, "sparsity=1", 321.0)
    assert r["swing_paper_pct"] == 100.0 * 100.0 / 301.0
    assert r["swing_maxmin_pct"] == 100.0 * 120.0 / 321.0
    assert (r["noise"], r["beyond_noise"]) == (2.0, True)
    assert "int8" not in h.index  # idle is not a GEMM point
    one = A.headline(pd.DataFrame([x for x in rows if x["seed"] == 1]), "mean_power_w").iloc[0]
    assert one["beyond_noise"] is None and one["why"] == "one sample per point: the run's noise is unknown (use --seeds or --repeats)"
    nob = A.headline(pd.DataFrame([x for x in rows if x["experiment"] != "baseline"]), "mean_power_w").iloc[0]
    assert nob["swing_paper_pct"] is None and nob["why"] == "no baseline experiment in this run (add --experiments baseline)"


def test_switching_model_selects_the_feature_that_predicts_held_out_experiments() -> None:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    rows = []
    for e in ("e1", "e2", "e3", "e4"):
        for v in range(6):
            f1, f2 = rng.random(), rng.random()
            rows.append({"dtype": "fp16", "backend": "b", "experiment": e, "value": float(v), "mean_power_w": 100.0 + 50.0 * f1,
                         "tog_a_k_man_frac": f1, "hw_b_exp_frac": f2, "zero_a_frac": 0.0})
    (m,), notes = A.fit_switching_models(pd.DataFrame(rows))
    assert m.features == ["tog_a_k_man_frac"] and notes == []
    assert abs(m.coef[0] - 100.0) < 1e-9 and abs(m.coef[1] - 50.0) < 1e-9
    assert abs(m.r2 - 1.0) < 1e-12 and m.loeo_mae_w < 1e-9


def test_capped_fit_recovers_the_line_under_a_power_limit() -> None:
    import numpy as np

    x = np.linspace(0.0, 1.0, 21)[:, None]
    true = 200.0 + 150.0 * x[:, 0]
    y = np.minimum(true, 300.0)  # the board holds 300 W by lowering the clock
    capped = true > 300.0
    coef, cap = A.fit_capped(x, y, capped)
    assert cap == 300.0
    assert abs(coef[0] - 200.0) < 1e-6 and abs(coef[1] - 150.0) < 1e-6
    # a plain fit bends the line; the censored one predicts the held-out top exactly
    plain, _, _ = A.fit_linear(x, y)
    assert abs(plain[1] - 150.0) > 10.0
    assert A.fit_capped(x, y, np.zeros(21, dtype=bool))[1] is None


def test_switching_model_censors_throttled_points_and_reports_nested_error() -> None:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(1)
    rows = []
    for e in ("e1", "e2", "e3", "e4"):
        for v in range(6):
            f1, f2 = rng.random(), rng.random()
            p = 200.0 + 150.0 * f1
            rows.append({"dtype": "fp16", "backend": "b", "experiment": e, "value": float(v), "mean_power_w": min(p, 300.0),
                         "mean_sm_clock_mhz": 1350.0 if p > 300.0 else 1410.0, "tog_a_k_man_frac": f1, "hw_b_exp_frac": f2})
    (m,), _ = A.fit_switching_models(pd.DataFrame(rows), nested=True)
    assert m.features == ["tog_a_k_man_frac"] and m.power_cap_w == 300.0 and m.n_throttled == sum(r["mean_sm_clock_mhz"] < 1400 for r in rows)
    assert abs(m.coef[1] - 150.0) < 1e-6 and m.loeo_mae_w < 1e-6 and m.nested_loeo_mae_w < 1e-6
    assert m.predict({"tog_a_k_man_frac": 1.0}) == 300.0


def test_partial_product_toggle_rate() -> None:
    import pandas as pd

    # fp16 mantissa only: h_a = 0.5, h_b = 0.25, t_a = 0.2, t_b = 0.4 -> 0.5*0.4 + 0.25*0.2 - 0.2*0.4/2 = 0.21
    cols = {c: 0.0 for f in ("sign", "exp", "man") for x in "ab" for c in (f"hw_{x}_{f}_frac", f"tog_{x}_k_{f}_frac", f"tog_{x}_mn_{f}_frac")}
    cols.update({"hw_a_man_frac": 0.5, "hw_b_man_frac": 0.25, "tog_a_k_man_frac": 0.2, "tog_b_k_man_frac": 0.4})
    out = A.add_product_toggle_features(pd.DataFrame([cols]), "float16")
    assert abs(out["pp_k_man_frac"][0] - 0.21) < 1e-12
    # over all 16 bits the mantissa is 10 of them: h_a = 0.3125, h_b = 0.15625, t_a = 0.125, t_b = 0.25
    assert abs(out["pp_k_all_frac"][0] - (0.3125 * 0.25 + 0.15625 * 0.125 - 0.125 * 0.25 / 2)) < 1e-12
    assert out["pp_mn_man_frac"][0] == 0.0
