"""--executor ray on a local two-node Ray cluster on loopback: the local points, per-node records, one resource per group."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.update({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"})
ray = pytest.importorskip("ray")  # the [ray] extra; the test extra installs it

from executor_toy import ToyStudy  # noqa: E402

from charbench.config import CommonOptions  # noqa: E402
from charbench.executors.base import LocalExecutor  # noqa: E402
from charbench.executors.ray_exec import RayExecutor  # noqa: E402
from charbench.results import RunStore  # noqa: E402
from charbench.study import RunSettings, run_study  # noqa: E402

SETTINGS = RunSettings(sample_interval_s=0)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(2):
        c.add_node(num_cpus=1, object_store_memory=100 << 20)
    ray.init(address=c.address, logging_level="error", log_to_driver=False)
    yield c
    ray.shutdown()
    c.shutdown()


def test_ray_gives_the_local_points_on_two_nodes(tmp_path: Path, cluster) -> None:
    common = CommonOptions(out=tmp_path / "runs", device="cpu")
    local = run_study(ToyStudy(6, work_s=0.3), common, SETTINGS, executor=LocalExecutor())
    remote = run_study(ToyStudy(6, work_s=0.3), CommonOptions(out=tmp_path / "runs", device="cpu", executor="ray"), SETTINGS,
                       executor=RayExecutor())
    a = sorted(RunStore.open(local.run_dir).records(), key=lambda r: r["x"])
    b = sorted(RunStore.open(remote.run_dir).records(), key=lambda r: r["x"])
    assert [(r["point_key"], r["y"]) for r in a] == [(r["point_key"], r["y"]) for r in b]
    assert remote.status == "completed" and remote.points_done == 6
    assert len({r["node"] for r in b}) == 2  # both worker nodes ran points, and each record names its node


def test_ray_acquires_each_group_once(tmp_path: Path, cluster) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    res = run_study(ToyStudy(6, marks=str(marks), group_by=("pair",)), CommonOptions(out=tmp_path / "runs", device="cpu", executor="ray"),
                    SETTINGS, executor=RayExecutor())
    assert res.points_done == 6
    assert len(list(marks.glob("acquire-*"))) == 3  # one resource (an engine) per group, on the node that ran it
    rows = RunStore.open(res.run_dir).records()
    by_pair = {}
    for r in rows:
        by_pair.setdefault(r["pair"], set()).add((r["node"], r["pid"]))
    assert all(len(v) == 1 for v in by_pair.values())  # a group's points ran in one worker


def test_ray_lost_worker_is_retried(tmp_path: Path, cluster) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    res = run_study(ToyStudy(4, die_at=(1,), marks=str(marks)), CommonOptions(out=tmp_path / "runs", device="cpu", executor="ray"), SETTINGS,
                    executor=RayExecutor(max_retries=1))
    rows = sorted(RunStore.open(res.run_dir).records(), key=lambda r: r["x"])
    assert [r["x"] for r in rows] == [0, 1, 2, 3] and res.points_failed == 0
