"""serve-sweep --max-duration: a load stops sending after it, and its point records that it was truncated."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

from .fakes import FakeTarget

# -- --max-duration: sending stops, the point says it was truncated -------------------------------


def test_load_stops_sending_after_max_duration() -> None:
    from charbench.workloads.serving.loadgen import LoadPlan, WorkItem, run_load
    from charbench.workloads.serving.metrics import SteadyTracker

    closed: list[float] = []
    tracker = SteadyTracker(5, 1, on_close=closed.append)
    items = [WorkItem(i, [5] * 4, 4, 4, 2, t) for i, t in enumerate([0.0, 0.01, 0.02, 1e9, 2e9])]
    t = FakeTarget(max_num_seqs=8, prefill_s=0.001, step_s=0.001)
    res = asyncio.run(run_load(t, LoadPlan(items, max_duration_s=0.5), tracker))
    assert [r.index for r in res.records] == [0, 1, 2] and res.unsent == 2
    assert res.end_s - res.origin_s < 0.5  # the 1e9 s due time was not waited for
    assert tracker.total == 3 and tracker.t_close is not None and closed == [tracker.t_close]
    closed_loop = asyncio.run(run_load(t, LoadPlan(items, closed_concurrency=1, max_duration_s=0.0)))
    assert closed_loop.unsent == 5 and closed_loop.records == []


def test_sweep_point_records_truncation(tmp_path: Path) -> None:
    from charbench.config import CommonOptions
    from charbench.results import RunStore
    from charbench.study import RunSettings, run_study
    from charbench.workloads.serving.config import ServeSweepConfig
    from charbench.workloads.serving.run import ServeSweepStudy

    # constant arrivals at 10 req/s are due at 0.1, 0.2, ... 0.6 s; at 1e-9 req/s the first is due after 1e9 s
    cfg = ServeSweepConfig(request_rate_rps=[10.0, 1e-9, math.inf], max_num_seqs=[2], input_len=[8], output_len=[4], num_requests=6,
                           warmup_requests=0, arrival="constant", max_duration_s=0.25)
    study = ServeSweepStudy(cfg, target_factory=lambda knobs, dev: FakeTarget(max_num_seqs=2))
    res = run_study(study, CommonOptions(out=tmp_path, device="cpu", continue_on_error=True), RunSettings(sample_interval_s=0))
    store = RunStore.open(res.run_dir)
    recs = {r["offered_load"]: r for r in store.records()}
    assert sorted(recs) == ["10 req/s", "all at once"]
    assert (recs["10 req/s"]["truncated"], recs["10 req/s"]["unsent_request_count"], recs["10 req/s"]["max_duration_s"]) == (True, 4, 0.25)
    assert recs["10 req/s"]["completed_count"] == 2
    assert (recs["all at once"]["truncated"], recs["all at once"]["unsent_request_count"]) == (False, 0)
    [fail] = store.failures()
    assert "--max-duration 0.25: no request of this load (rate) was due within it; raise --max-duration or --request-rate" in fail["message"]
