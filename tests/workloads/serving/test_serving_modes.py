"""Mode logic with a fake measure(): GuideLLM sweep, SLO bisection."""

from __future__ import annotations

import math
from typing import Any

import pytest

from charbench.record import Record

from charbench.workloads.serving.modes import Load, meets_slo, run_sweep, slo_search


class FakeServer:
    """Throughput saturates at ``cap`` req/s; the SLO holds below ``knee`` req/s."""

    def __init__(self, cap: float = 20.0, knee: float = 13.0, sync: float = 2.0) -> None:
        self.cap, self.knee, self.sync = cap, knee, sync
        self.loads: list[Load] = []

    def __call__(self, load: Load) -> dict[str, Any]:
        self.loads.append(load)
        if load.kind == "concurrency":
            thr = self.sync
            att = 1.0
        elif math.isinf(float(load.value)):  # type: ignore[arg-type]
            thr, att = self.cap, 0.2
        else:
            thr = min(float(load.value), self.cap)  # type: ignore[arg-type]
            att = 1.0 if float(load.value) <= self.knee else 0.5  # type: ignore[arg-type]
        rate = None if load.kind != "rate" or math.isinf(float(load.value)) else float(load.value)  # type: ignore[arg-type]
        return Record({"request_throughput_rps": thr, "slo_attainment_frac": att, "mode_step": load.step}).set(
            "request_rate_rps", rate, reason="not an open-loop load")


def test_sweep_sync_then_throughput_then_rates_between() -> None:
    s = FakeServer()
    recs = run_sweep(s, n_rates=3)
    assert [l.step for l in s.loads] == ["synchronous", "throughput", "sweep-1", "sweep-2", "sweep-3"]
    assert s.loads[0] == Load("concurrency", 1, "synchronous")
    assert [l.value for l in s.loads[2:]] == pytest.approx([6.5, 11.0, 15.5])
    assert len(recs) == 5


def test_sweep_skips_rates_without_both_bounds() -> None:
    s = FakeServer()
    recs = run_sweep(lambda l: {**s(l), "request_throughput_rps": None} if l.step == "throughput" else s(l), n_rates=3)
    assert len(recs) == 2


def test_slo_search_bisects_to_the_knee() -> None:
    s = FakeServer(cap=20.0, knee=13.0)
    recs = slo_search(s, attainment=0.9, iters=10, rel_tol=0.01, lo_frac=0.1)
    best = [r for r in recs if r["slo_search_best"]]
    assert len(best) == 1
    assert best[0]["request_rate_rps"] <= 13.0
    assert best[0]["request_rate_rps"] == pytest.approx(13.0, rel=0.02)
    assert all(r["slo_max_rate_rps"] == best[0]["request_rate_rps"] for r in recs)
    assert s.loads[0].step == "throughput" and s.loads[1].value == 20.0 and s.loads[2].value == pytest.approx(2.0)


def test_slo_search_answer_at_max_and_no_answer() -> None:
    s = FakeServer(cap=10.0, knee=50.0)
    recs = slo_search(s, attainment=0.9)
    assert [r["request_rate_rps"] for r in recs if r["slo_search_best"]] == [10.0]
    s = FakeServer(cap=10.0, knee=0.5)
    recs = slo_search(s, attainment=0.9)
    assert not any(r["slo_search_best"] for r in recs)
    assert recs[0]["slo_max_rate_rps"] is None and "missed even at" in recs[0]["slo_search_note"]
    # the null carries its reason into null_reasons (not the generic "not measured")
    assert all("no rate meets the SLOs: the SLOs are missed even at" in r.reasons["slo_max_rate_rps"] for r in recs)


def test_meets_slo() -> None:
    assert meets_slo({"slo_attainment_frac": 0.9}, 0.9)
    assert not meets_slo({"slo_attainment_frac": None}, 0.1)
