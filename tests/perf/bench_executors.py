"""Executor benchmark: dispatch overhead per point and 8 x 2 s CPU points on two one-CPU Ray nodes vs local.

Run: ``.venv/bin/python -m pytest -q -m perf tests/perf/bench_executors.py -s`` (prints the figures).
Targets (issue 17): overhead <= 50 ms per point beyond its own time; 8 x 2 s in <= 0.6x local.
It also prints where the Ray run's extra time went: from the run's start to the first point
(connect, driver setup, a cold Ray worker's start) and from the last point to the end.
The machine's load average is printed beside the figures (the CPU is shared).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

os.environ.update({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"})
ray = pytest.importorskip("ray")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "executors"))
import executor_toy  # noqa: E402
import ray.cloudpickle  # noqa: E402

from charbench.config import CommonOptions  # noqa: E402
from charbench.executors.base import LocalExecutor  # noqa: E402
from charbench.executors.ray_exec import RayExecutor  # noqa: E402
from charbench.study import RunSettings, run_study  # noqa: E402

ray.cloudpickle.register_pickle_by_value(executor_toy)
pytestmark = pytest.mark.perf


def _spans(run_dir: Path) -> tuple[list[float], list[float]]:
    """The points' start and end times (epoch seconds) from their records."""
    import datetime as dt

    from charbench.results import RunStore

    rows = RunStore.open(run_dir).records()
    return ([dt.datetime.fromisoformat(r["point_started_at"]).timestamp() for r in rows],
            [dt.datetime.fromisoformat(r["point_ended_at"]).timestamp() for r in rows])


def test_bench_executors(tmp_path: Path) -> None:
    from ray.cluster_utils import Cluster

    settings = RunSettings(sample_interval_s=0)
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(2):
        c.add_node(num_cpus=1, object_store_memory=100 << 20)
    ray.init(address=c.address, logging_level="error", log_to_driver=False)
    try:
        common = CommonOptions(out=tmp_path, device="cpu")
        t0 = time.perf_counter()
        run_study(executor_toy.ToyStudy(8, work_s=2.0), common, settings, executor=LocalExecutor())
        local_s = time.perf_counter() - t0
        t0, wall0 = time.perf_counter(), time.time()
        res = run_study(executor_toy.ToyStudy(8, work_s=2.0), common, settings, executor=RayExecutor())
        ray_s = time.perf_counter() - t0
        starts, ends = _spans(res.run_dir)
        first_s, tail_s = min(starts) - wall0, wall0 + ray_s - max(ends)
        # the same sweep again from this driver: its Ray workers are started now (informative; the target is the cold run above)
        t0 = time.perf_counter()
        run_study(executor_toy.ToyStudy(8, work_s=2.0), common, settings, executor=RayExecutor())
        warm_s = time.perf_counter() - t0
        run_study(executor_toy.ToyStudy(2), common, settings, executor=RayExecutor())  # warm the workers
        n = 40
        t0 = time.perf_counter()
        run_study(executor_toy.ToyStudy(n), common, settings, executor=RayExecutor())
        per_point_ms = (time.perf_counter() - t0) / n * 1000 * 2  # two points run at once: per point, per slot
        t0 = time.perf_counter()
        run_study(executor_toy.ToyStudy(n), common, settings, executor=LocalExecutor())
        local_per_point_ms = (time.perf_counter() - t0) / n * 1000
    finally:
        ray.shutdown()
        c.shutdown()
    print(f"\nload average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"8 x 2 s CPU: local {local_s:.1f} s, ray 2 nodes {ray_s:.1f} s ({ray_s / local_s:.2f}x); "
          f"ray: first point started {first_s:.2f} s after the run began, the run ended {tail_s:.2f} s after the last point")
    print(f"8 x 2 s CPU again with the Ray workers already started: {warm_s:.1f} s ({warm_s / local_s:.2f}x local)")
    print(f"empty point: ray {per_point_ms:.1f} ms per point per node, local {local_per_point_ms:.1f} ms; "
          f"dispatch overhead {per_point_ms - local_per_point_ms:.1f} ms")
    assert ray_s <= 0.6 * local_s
    assert per_point_ms - local_per_point_ms <= 50
