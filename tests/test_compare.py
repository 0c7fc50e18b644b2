"""charbench compare: point matching, noise rule, exit codes, default gates, escaping."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from charbench import compare as cm
from charbench import compare_page
from charbench.cli import main
from charbench.errors import ConfigError
from charbench.record import Record
from charbench.sweep import expand

_spec = importlib.util.spec_from_file_location("charbench_test_fakeruns", Path(__file__).parent / "browser" / "fakeruns.py")
fakeruns = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fakeruns)  # type: ignore[union-attr]
make_run = fakeruns.make_run

XSS = "<script>alert(1)</script>"
#: synthetic runs: a study without declared gates, so energy_j and mean_power_w gate (the fallback)
TOY = "matmul-toy"
# five seeds around 10 with sample std ~1.58: a 7% shift of the mean is inside the noise band
SPREAD = [10.0, 12.0, 8.0, 11.0, 9.0]


def _t(day: int) -> dt.datetime:
    return dt.datetime(2026, 1, day, 12, 0, 0)


def _grid(seeds: int = 0) -> list[dict[str, Any]]:
    knobs: dict[str, Any] = {"dtype": ["fp16", "fp32"], "size": [256, 512]}
    if seeds:
        knobs["seed"] = list(range(seeds))
    return expand(knobs)


def _energy(scale: float = 1.0, power: float = 100.0, tflops: float = 50.0, spread: bool = False):
    def measure(p: dict[str, Any]) -> dict[str, Any]:
        base = SPREAD[p["seed"]] if spread else 10.0
        e = scale * base * p["size"] / 256
        return {"energy_j": e, "mean_power_w": power, "time_s": e / power, "tflops_per_s": tflops, "sm_clock_mhz": 1410.0}
    return measure


def _pair(tmp_path: Path, cand_scale: float, *, seeds: int = 0, spread: bool = False, study: str = TOY, **kw: Any) -> tuple[Path, Path]:
    b = make_run(tmp_path, study, _grid(seeds), _energy(1.0, spread=spread), label="base", now=_t(1))
    c = make_run(tmp_path, study, _grid(seeds), _energy(cand_scale, spread=spread, **kw), label="cand", now=_t(2))
    return b, c


# -- point matching ---------------------------------------------------------------------
def test_points_match_across_knob_orders_and_value_spellings(tmp_path: Path) -> None:
    b = make_run(tmp_path, TOY, _grid(), _energy(), now=_t(1))
    # candidate: knobs declared in the other order, sizes as floats, and its point keys written
    # with the knobs unsorted (another key text for the same point)
    pts = [{"size": float(p["size"]), "dtype": p["dtype"]} for p in reversed(_grid())]
    unsorted_key = lambda p: ",".join(f"{k}={p[k]}" for k in p)  # noqa: E731
    c = make_run(tmp_path, TOY, pts, _energy(1.0), now=_t(2), key=unsorted_key)
    cmp = cm.compare_runs(b, c)
    assert len(cmp.matched) == 4 and not cmp.only_baseline and not cmp.only_candidate
    assert sorted(cmp.matched) == ["dtype=fp16, size=256", "dtype=fp16, size=512", "dtype=fp32, size=256", "dtype=fp32, size=512"]
    assert {d.verdict for d in cmp.deltas if d.metric == "energy_j"} == {"unchanged"}
    assert cmp.exit_code == cm.EXIT_OK


def test_unmatched_points_are_listed_and_not_compared(tmp_path: Path) -> None:
    b = make_run(tmp_path, TOY, _grid(), _energy(), now=_t(1))
    c = make_run(tmp_path, TOY, expand({"dtype": ["fp16", "bf16"], "size": [256, 512]}), _energy(), now=_t(2))
    cmp = cm.compare_runs(b, c)
    assert len(cmp.matched) == 2
    assert sorted(cmp.only_baseline) == ["dtype=fp32, size=256", "dtype=fp32, size=512"]
    assert sorted(cmp.only_candidate) == ["dtype=bf16, size=256", "dtype=bf16, size=512"]
    assert any("only in the baseline" in n for n in cmp.notes)


def test_several_rows_per_point_are_told_apart_by_their_varying_column(tmp_path: Path) -> None:
    def rows(scale: float):
        def m(p: dict[str, Any]) -> dict[str, Any]:
            return {"energy_j": scale * p["size"], "mean_power_w": 100.0}
        return m

    def run(scale_prefill: float, day: int) -> Path:
        from charbench.results import RunStore
        from charbench.study import finalize_record
        from charbench.sweep import point_key

        store = RunStore.create(tmp_path, TOY, config={}, env={}, now=_t(day))
        for i, p in enumerate(_grid()):
            recs = [{"phase": "prefill", "energy_j": scale_prefill * p["size"], "mean_power_w": 100.0},
                    {"phase": "decode", "energy_j": 1.0 * p["size"], "mean_power_w": 100.0}]
            store.append_records([finalize_record(r, p, point_key(p), i) for r in recs])
        store.finish("completed")
        return store.path

    cmp = cm.compare_runs(run(1.0, 1), run(2.0, 2))
    assert len(cmp.matched) == 8  # 4 points x 2 phases
    verdicts = {d.point: d.verdict for d in cmp.deltas if d.metric == "energy_j"}
    assert all(v == "regression" for k, v in verdicts.items() if "phase=prefill" in k)
    assert all(v == "unchanged" for k, v in verdicts.items() if "phase=decode" in k)


# -- noise --------------------------------------------------------------------------------
def test_shift_inside_seed_spread_is_noise_not_regression(tmp_path: Path) -> None:
    b, c = _pair(tmp_path, 1.07, seeds=5, spread=True)  # +7% > 5% threshold, but inside the spread
    cmp = cm.compare_runs(b, c, threshold_pct=5.0)
    e = [d for d in cmp.deltas if d.metric == "energy_j"]
    assert {d.verdict for d in e} == {"noise"}
    assert all(d.n_b == 5 and d.n_c == 5 for d in e)
    d0 = e[0]
    # the documented rule: |delta| <= 2 * sqrt(s_b^2/n_b + s_c^2/n_c)
    expected = 2.0 * ((d0.std_b ** 2) / 5 + (d0.std_c ** 2) / 5) ** 0.5
    assert d0.noise_band == pytest.approx(expected)
    assert abs(d0.delta) <= d0.noise_band and d0.delta_pct == pytest.approx(7.0)
    assert cmp.exit_code == cm.EXIT_OK


def test_same_shift_without_seeds_is_a_regression(tmp_path: Path) -> None:
    b, c = _pair(tmp_path, 1.07)
    cmp = cm.compare_runs(b, c, threshold_pct=5.0)
    assert {d.verdict for d in cmp.deltas if d.metric == "energy_j"} == {"regression"}
    assert all(d.noise_band is None for d in cmp.deltas)
    assert cmp.exit_code == cm.EXIT_REGRESSION


def test_shift_beyond_seed_spread_is_a_regression(tmp_path: Path) -> None:
    b, c = _pair(tmp_path, 1.5, seeds=5, spread=True)
    cmp = cm.compare_runs(b, c)
    assert {d.verdict for d in cmp.deltas if d.metric == "energy_j"} == {"regression"}
    assert cmp.exit_code == cm.EXIT_REGRESSION


def test_classify_rule_edges() -> None:
    assert cm.classify([10.0], [10.4], cm.LOWER, 5.0)[0] == "unchanged"
    assert cm.classify([10.0], [11.0], cm.LOWER, 5.0)[0] == "regression"
    assert cm.classify([10.0], [9.0], cm.LOWER, 5.0)[0] == "improvement"
    assert cm.classify([10.0], [9.0], cm.HIGHER, 5.0)[0] == "regression"
    assert cm.classify([10.0], [11.0], cm.NEUTRAL, 5.0)[0] == "changed"
    assert cm.classify([], [11.0], cm.LOWER, 5.0)[0] == "missing"
    # one side with a single sample: no spread to judge, threshold only
    assert cm.classify([10.0, 14.0], [13.0], cm.LOWER, 5.0)[0] == "regression"
    # exactly on the band edge counts as noise
    verdict, f = cm.classify([9.0, 11.0], [13.0, 15.0], cm.LOWER, 5.0)
    assert f["noise_band"] == pytest.approx(2.0 * (2.0 / 2 + 2.0 / 2) ** 0.5)
    assert verdict == "regression"  # delta 4 > band 2.83
    assert cm.classify([9.0, 11.0], [11.0, 13.0], cm.LOWER, 5.0)[0] == "noise"  # delta 2 <= 2.83


# -- exit codes --------------------------------------------------------------------------
def test_exit_3_on_regression_and_page_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    b, c = _pair(tmp_path, 1.2)
    out = tmp_path / "cmp.html"
    assert main(["compare", str(b), str(c), "--out", str(out)]) == 3
    cap = capsys.readouterr()
    assert "REGRESSION" in cap.out and "energy_j" in cap.out and "+20.00%" in cap.out
    assert cap.err == ""  # the verdict line on stdout is the one message (no "Error: regression")
    assert out.is_file() and "REGRESSION" in out.read_text()


def test_exit_0_on_improvement(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    b, c = _pair(tmp_path, 0.8)
    assert main(["compare", str(b), str(c), "--out", str(tmp_path / "c.html")]) == 0
    out = capsys.readouterr().out
    assert "OK: no gated metric" in out and "improvement" in out


def test_exit_0_on_noise(tmp_path: Path) -> None:
    b, c = _pair(tmp_path, 1.07, seeds=5, spread=True)
    assert main(["compare", str(b), str(c), "--out", str(tmp_path / "c.html")]) == 0


def test_threshold_decides(tmp_path: Path) -> None:
    b, c = _pair(tmp_path, 1.04)
    assert main(["compare", str(b), str(c), "--threshold", "5", "--out", str(tmp_path / "a.html")]) == 0
    assert main(["compare", str(b), str(c), "--threshold", "3", "--out", str(tmp_path / "b.html")]) == 3


def test_default_page_goes_into_the_candidate_folder(tmp_path: Path) -> None:
    b, c = _pair(tmp_path, 1.0)
    assert main(["compare", str(b), str(c)]) == 0
    assert (c / "compare.html").is_file()


def test_metric_option_with_direction_gates_only_that_metric(tmp_path: Path) -> None:
    b = make_run(tmp_path, TOY, _grid(), _energy(tflops=50.0), now=_t(1))
    c = make_run(tmp_path, TOY, _grid(), _energy(1.2, tflops=40.0), now=_t(2))
    args = ["compare", str(b), str(c), "--out", str(tmp_path / "x.html")]
    assert main([*args, "--metric", "tflops_per_s:higher"]) == 3
    assert main([*args, "--metric", "tflops_per_s:lower"]) == 0  # 20% lower is now better
    assert main([*args, "--metric", "mean_power_w"]) == 0  # unchanged; energy_j no longer gated


def test_json_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    b, c = _pair(tmp_path, 1.2)
    assert main(["compare", str(b), str(c), "--json", "--out", str(tmp_path / "x.html")]) == 3
    data = json.loads(capsys.readouterr().out)
    assert data["exit_code"] == 3 and data["matched_points"] == 4
    assert [g["name"] for g in data["gated_metrics"]] == ["energy_j", "mean_power_w"]
    assert {r["metric"] for r in data["regressions"]} == {"energy_j"}


@pytest.mark.parametrize("case", ["unknown-metric", "bad-direction", "neutral-metric", "other-study", "no-match", "not-a-run", "negative-threshold"])
def test_exit_1_on_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str) -> None:
    b, c = _pair(tmp_path, 1.0)
    args = ["compare", str(b), str(c), "--out", str(tmp_path / "x.html")]
    expect = ""
    if case == "unknown-metric":
        args += ["--metric", "bogus_j"]
        expect = "available: energy_j, mean_power_w, sm_clock_mhz, tflops_per_s, time_s"
    elif case == "bad-direction":
        args += ["--metric", "energy_j:up"]
        expect = "'higher' or 'lower'"
    elif case == "neutral-metric":
        args += ["--metric", "sm_clock_mhz"]
        expect = "sm_clock_mhz:lower or sm_clock_mhz:higher"
    elif case == "other-study":
        s = make_run(tmp_path, "serve-sweep", _grid(), _energy(), now=_t(3))
        args[2] = str(s)
        expect = "compare two runs of one study"
    elif case == "no-match":
        s = make_run(tmp_path, TOY, expand({"dtype": ["int8"], "size": [64]}), _energy(), now=_t(3))
        args[2] = str(s)
        expect = "no point of"
    elif case == "not-a-run":
        args[2] = str(tmp_path)
        expect = "not a charbench run folder"
    elif case == "negative-threshold":
        args += ["--threshold", "-1"]
        expect = "--threshold"
    assert main(args) == 1
    assert expect in capsys.readouterr().err


def test_usage_errors_exit_nonzero(tmp_path: Path) -> None:
    b, c = _pair(tmp_path, 1.0)
    assert main(["compare", str(b)]) != 0
    from typer.testing import CliRunner

    from charbench.commands.compare import app

    res = CliRunner().invoke(app, [str(b), str(c), "--no-such-option"])
    assert res.exit_code == cm.EXIT_USAGE


def test_missing_values_are_reported_not_gated(tmp_path: Path) -> None:
    b = make_run(tmp_path, "gemm-power", _grid(), _energy(), now=_t(1))

    def unmeasured(p: dict[str, Any]) -> Record:
        return Record().null("energy_j", "no meter").null("mean_power_w", "no meter").set("time_s", 0.1)

    c = make_run(tmp_path, "gemm-power", _grid(), unmeasured, now=_t(2))
    cmp = cm.compare_runs(b, c)
    assert {d.verdict for d in cmp.deltas if d.metric == "mean_power_w"} == {"missing"}  # a declared gate of gemm-power
    assert cmp.exit_code == cm.EXIT_OK
    assert any("not measured" in n for n in cmp.notes)


# -- defaults, units ------------------------------------------------------------------------
def test_default_gates_per_study() -> None:
    cols = ["energy_j", "mean_power_w", "time_s", "ttft_p99_ms", "tpot_ms_p99", "energy_per_token_j", "tokens_per_s"]
    # one name per gate: old spellings are renamed when an old run is read (migration 2), not listed here
    assert cm.default_gates("gemm-power", cols) == ["mean_power_w"]
    assert cm.default_gates("gemm-power", [*cols, "energy_per_gemm_j"]) == ["energy_per_gemm_j", "mean_power_w"]
    assert cm.default_gates("serve-sweep", cols) == []
    serve = ["p99_ttft_ms", "p99_tpot_ms", "median_ttft_ms", "energy_per_output_token_j", "steady_energy_per_output_token_j"]
    assert cm.default_gates("serve-sweep", serve) == ["p99_ttft_ms", "p99_tpot_ms", "energy_per_output_token_j"]
    assert cm.default_gates("some-new-study", cols) == ["energy_j", "mean_power_w"]
    assert cm.default_gates("some-new-study", ["time_s"]) == []


@pytest.mark.parametrize(("name", "direction"), [
    ("energy_j", "lower"), ("mean_power_w", "lower"), ("time_per_gemm_s", "lower"), ("ttft_ms", "lower"),
    ("ttft_ms_p99", "lower"), ("tpot_p99_ms", "lower"), ("tflops_per_s", "higher"), ("tokens_per_s", "higher"),
    ("tflops", None), ("sm_clock_mhz", "neutral"), ("output_throughput_tok_s", "higher"), ("output_per_energy_net_tok_j", "higher"),
    ("energy_per_flop_pj", "lower"), ("request_goodput_rps", "higher"), ("t_s", None), ("point_t0_s", None), ("trace_start_s", None), ("util_pct", "neutral"), ("temp_c", "lower"), ("dtype", None), ("point_index", None),
])
def test_metric_direction_from_unit(name: str, direction: str | None) -> None:
    assert cm.metric_direction(name) == direction


def test_knobs_with_unit_suffix_are_not_metrics(tmp_path: Path) -> None:
    pts = expand({"power_limit_w": [200, 300], "seed": [0, 1]})
    b = make_run(tmp_path, TOY, pts, lambda p: {"energy_j": 1.0, "mean_power_w": 0.5 * p["power_limit_w"]}, now=_t(1))
    rp = cm.load_points(b)
    assert rp.knobs == ["power_limit_w", "seed"] and rp.noise_knobs == ["seed"]
    assert "power_limit_w" not in rp.metrics and set(rp.metrics) == {"energy_j", "mean_power_w"}
    assert len(rp.groups) == 2 and all(len(v) == 2 for v in rp.groups.values())


def test_parse_point_key_and_canonical_values() -> None:
    assert cm.parse_point_key("dtype=fp16,p=0.5,shape=_1,_2_") == {"dtype": "fp16", "p": "0.5", "shape": "_1,_2_"}
    assert cm.canonical_value(256) == cm.canonical_value(256.0) == cm.canonical_value("256.0") == "256"
    assert cm.canonical_value(True) == cm.canonical_value("True") == "true"
    with pytest.raises(ConfigError):
        cm.parse_metric_option(":lower")


# -- pages ---------------------------------------------------------------------------------
def test_page_escapes_labels_metadata_and_knob_values(tmp_path: Path) -> None:
    evil = {"hostname": XSS, "git_sha": XSS, "gpus": [{"name": XSS}], "meters": []}
    pts = expand({"kernel": ["<img src=x onerror=alert(2)>", "plain"], "size": [1, 2]})
    b = make_run(tmp_path, TOY, pts, lambda p: {"energy_j": 1.0 * p["size"]}, label=XSS, meta={"note": XSS}, env=evil, now=_t(1))
    c = make_run(tmp_path, TOY, pts, lambda p: {"energy_j": 2.0 * p["size"]}, label=XSS, meta={"note": XSS}, env=evil, now=_t(2))
    out = tmp_path / "cmp.html"
    cmp = cm.compare_runs(b, c)
    compare_page.render_comparison([b, c], out, comparisons=[cmp])
    html = out.read_text()
    assert XSS not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(2)&gt;" in html


def test_report_with_several_runs_renders_a_comparison(tmp_path: Path) -> None:
    b, c = _pair(tmp_path, 1.2)
    c2 = make_run(tmp_path, TOY, _grid(), _energy(0.9), label="cand2", now=_t(3))
    out = tmp_path / "many.html"
    assert main(["report", str(b), str(c), str(c2), "--out", str(out)]) == 0
    html = out.read_text()
    assert "(1/2)" in html and "(2/2)" in html and "REGRESSION" in html
    assert html.count('class="plot"') >= 2


def test_constant_knob_added_in_one_run_is_ignored_for_matching(tmp_path: Path) -> None:
    b = make_run(tmp_path, TOY, _grid(), _energy(), now=_t(1))
    c = make_run(tmp_path, TOY, [{**p, "backend": "cublas"} for p in _grid()], _energy(1.2), now=_t(2))
    cmp = cm.compare_runs(b, c)
    assert len(cmp.matched) == 4 and cmp.exit_code == cm.EXIT_REGRESSION
    assert any("knob backend=cublas only in the candidate" in n for n in cmp.notes)
    # a knob that varies in one run and is absent in the other cannot be matched
    c2 = make_run(tmp_path, TOY, [{**p, "backend": be} for p in _grid() for be in ("a", "b")], _energy(), now=_t(3))
    with pytest.raises(ConfigError, match="no point of"):
        cm.compare_runs(b, c2)


def test_unmeasured_default_gates_are_named_in_the_notes(tmp_path: Path) -> None:
    def cpu_only(p: dict[str, Any]) -> dict[str, Any]:
        return Record().null("energy_j", "no RAPL").null("mean_power_w", "no RAPL").set("time_s", 0.1 * p["size"])

    b = make_run(tmp_path, TOY, _grid(), cpu_only, now=_t(1))
    c = make_run(tmp_path, TOY, _grid(), cpu_only, now=_t(2))
    cmp = cm.compare_runs(b, c)
    assert not cmp.gated and cmp.exit_code == cm.EXIT_OK
    assert any("energy_j, mean_power_w were not measured" in n for n in cmp.notes)


def test_delta_bars_without_a_noise_band_draw_no_error_bar(tmp_path: Path) -> None:
    """A point with one sample a side has no noise band: no error bar, not a bar of length 0."""
    pts = [{"size": 256, "seed": s} for s in (0, 1, 2)] + [{"size": 512, "seed": 0}]
    b = make_run(tmp_path, TOY, pts, lambda p: {"energy_j": 10.0 + p["seed"] + p["size"] / 256}, label="b", now=_t(1))
    c = make_run(tmp_path, TOY, pts, lambda p: {"energy_j": 13.0 + p["seed"] + p["size"] / 256}, label="c", now=_t(2))
    cmp = cm.compare_runs(b, c, ["energy_j"])
    bands = {d.point: d.noise_band_pct for d in cmp.deltas if d.metric == "energy_j"}
    assert bands["size=512"] is None and bands["size=256"] is not None
    html = compare_page._delta_figures(cmp)
    fig = json.loads(html[html.index("var f=") + len("var f="):html.index(";Plotly.newPlot")])
    drawn: dict[str, Any] = {}
    for trace in fig["data"]:
        if trace.get("type") != "bar":
            continue
        arr = (trace.get("error_x") or {}).get("array")  # horizontal bars: the points on the y axis
        for i, y in enumerate(trace["y"]):
            drawn[y] = None if arr is None else arr[i]
    assert drawn["size=512"] is None  # no error bar at all
    assert drawn["size=256"] == pytest.approx(bands["size=256"])


def test_metric_option_on_an_unmeasured_metric_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def unmeasured(p: dict[str, Any]) -> dict[str, Any]:
        return Record().null("energy_j", "no RAPL zones here").set("time_s", 0.1 * p["size"])

    b = make_run(tmp_path, TOY, _grid(), unmeasured, now=_t(1))
    c = make_run(tmp_path, TOY, _grid(), unmeasured, now=_t(2))
    assert main(["compare", str(b), str(c), "--metric", "energy_j", "--out", str(tmp_path / "x.html")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: --metric energy_j: not measured in the baseline and the candidate run (null in every point: no RAPL zones here)")
    assert "gate on a measured metric: time_s" in err


@pytest.mark.parametrize("name", ["env.json", "config.json"])
def test_damaged_env_or_config_is_an_error_naming_the_file(tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    b, c = _pair(tmp_path, 1.0)
    (c / name).write_text('{"gpus": [')  # before: an internal JSONDecodeError
    assert main(["compare", str(b), str(c), "--out", str(tmp_path / "c.html")]) == 1
    assert capsys.readouterr().err == (
        f"Error: {c / name}: unreadable (JSONDecodeError: Expecting value: line 1 column 11 (char 10)); the run folder is damaged\n"
    )
