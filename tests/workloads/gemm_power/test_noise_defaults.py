"""gemm-power repeats short points by default, so the report's bands show the run's own noise."""

from __future__ import annotations

import dataclasses

from charbench.workloads.gemm_power.config import PRESETS, SHORT_POINT_REPEATS, resolve
from charbench.workloads.gemm_power.run import GemmPowerStudy


def test_short_cpu_points_are_repeated_by_default() -> None:
    cfg = resolve(PRESETS["quick"], "cpu")
    assert (cfg.duration_s, cfg.repeats) == (0.1, SHORT_POINT_REPEATS) == (0.1, 3)
    assert resolve(dataclasses.replace(PRESETS["quick"], repeats=1), "cpu").repeats == 1  # --repeats wins
    assert resolve(dataclasses.replace(PRESETS["quick"], duration_s=2.0), "cpu").repeats == 1  # a long point: once
    assert resolve(PRESETS["paper"], "cpu").repeats == 1  # 1 s points


def test_a_repeat_reuses_its_points_inputs(tmp_path, monkeypatch) -> None:
    """Repeats of one (experiment, value, dtype, seed) time the same matrices; the next point makes new ones."""
    from charbench.config import CommonOptions
    from charbench.results import RunStore
    from charbench.settings import RunSettings
    from charbench.study import run_study
    from charbench.workloads.gemm_power import generators

    made = []
    orig = generators.generate_pair

    def counting(exp, value, *a, **k):
        made.append((exp.name, value))
        return orig(exp, value, *a, **k)

    monkeypatch.setattr(generators, "generate_pair", counting)
    cfg = resolve(dataclasses.replace(PRESETS["quick"], experiments=["sigma"], size=[16, 16, 16], repeats=2, duration_s=0.005,
                                      check_correctness=False), "cpu")
    res = run_study(GemmPowerStudy(cfg, "cpu"), CommonOptions(out=tmp_path, device="cpu", json=True), RunSettings(sample_interval_s=0))
    df = RunStore.open(res.run_dir).results_frame()
    assert len(df) == 2 * 3 * 2  # dtypes x sigma values x repeats
    assert made == [("sigma", v) for _ in range(2) for v in (0.0312, 8.0, 1024.0)]  # once per (dtype, value), not per repeat
    per_point = df.groupby(["dtype", "value"])["toggle_k_frac"].nunique()
    assert (per_point == 1).all()  # both repeats measured the same inputs
