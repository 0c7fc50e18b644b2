"""Load generator pacing: schedule, concurrency cap, closed loop, resume through the CLI."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import numpy as np
import pytest

from charbench.workloads.serving.loadgen import LoadPlan, WorkItem, run_load, warm_up

from .fakes import FakeTarget


def _items(n: int, times: list[float] | None = None, out: int = 3) -> list[WorkItem]:
    return [WorkItem(i, [5] * 4, 4, 4, out, None if times is None else times[i]) for i in range(n)]


def test_open_loop_follows_the_schedule() -> None:
    t = FakeTarget(max_num_seqs=64, prefill_s=0.001, step_s=0.001)
    times = [0.0, 0.05, 0.1, 0.1, 0.3]
    res = asyncio.run(run_load(t, LoadPlan(_items(5, times))))
    sched = np.array([r.scheduled_s for r in res.records]) - res.origin_s
    np.testing.assert_allclose(sched, times, atol=1e-9)
    late = np.array([r.send_s - r.scheduled_s for r in res.records])
    assert late.min() >= 0 and np.median(late) < 0.02  # generous: shared CI machines
    assert res.lateness["send_lateness_p99_ms"] is not None
    assert all(r.ok and r.output_tokens == 3 for r in res.records)


def test_max_concurrency_caps_requests_in_flight() -> None:
    from charbench.workloads.serving.metrics import max_in_flight_count

    t = FakeTarget(max_num_seqs=64, prefill_s=0.01, step_s=0.005)
    res = asyncio.run(run_load(t, LoadPlan(_items(12, [0.0] * 12), max_concurrency=3)))
    assert max_in_flight_count(res.records) <= 3
    assert res.lateness == {}  # capped sends are late by design: no lateness stats


def test_closed_loop_keeps_n_users_busy() -> None:
    from charbench.workloads.serving.metrics import max_in_flight_count

    t = FakeTarget(max_num_seqs=64, prefill_s=0.005, step_s=0.002)
    res = asyncio.run(run_load(t, LoadPlan(_items(10), closed_concurrency=2)))
    assert max_in_flight_count(res.records) == 2
    assert all(r.scheduled_s is None and r.ok for r in res.records)
    one = asyncio.run(run_load(t, LoadPlan(_items(4), closed_concurrency=1)))
    sends = [r.send_s for r in one.records]
    ends = [r.end_s for r in one.records]
    assert all(s >= e for s, e in zip(sends[1:], ends[:-1]))  # synchronous: one at a time


def test_warm_up_counts_errors_and_a_target_bug_is_contained() -> None:
    assert asyncio.run(warm_up(FakeTarget(fail_every=2), _items(4, [0.0] * 4))) == 2

    class Buggy(FakeTarget):
        async def send(self, rec, prompt, hooks):  # type: ignore[no-untyped-def]
            raise ValueError("bug")

    res = asyncio.run(run_load(Buggy(), LoadPlan(_items(2, [0.0, 0.0]))))
    assert all(r.error == "ValueError: bug" and r.end_s is not None for r in res.records)


def test_cli_resume_of_a_completed_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from charbench.cli import main
    from charbench.config import CommonOptions
    from charbench.study import RunSettings, run_study
    from charbench.workloads.serving.config import ServeSweepConfig
    from charbench.workloads.serving.run import ServeSweepStudy

    cfg = ServeSweepConfig(request_rate_rps=[math.inf], max_num_seqs=[2], input_len=[4], output_len=[3], num_requests=4, warmup_requests=0)
    res = run_study(ServeSweepStudy(cfg, target_factory=lambda k, d: FakeTarget(max_num_seqs=2)),
                    CommonOptions(out=tmp_path, device="cpu"), RunSettings(sample_interval_s=0))
    assert main(["serve-sweep", "--resume", str(res.run_dir), "--device", "cpu", "--json"]) == 0
    out = capsys.readouterr().out
    assert '"status": "completed"' in out and '"points_done": 1' in out
    # options that agree with the saved config are accepted (before: any option was refused)
    assert main(["serve-sweep", "--resume", str(res.run_dir), "--request-rate", "inf", "--num-requests", "4", "--json"]) == 0
    assert '"points_done": 1' in capsys.readouterr().out
