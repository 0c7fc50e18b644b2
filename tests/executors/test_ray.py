"""--executor ray on a local two-node Ray cluster on loopback (one cluster for the module): the local points, per-node
records and report, one resource (a serve-sweep engine) per group, a lost node, a killed driver, Ctrl-C, resume locally."""

from __future__ import annotations

import _thread
import json
import math
import os
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

os.environ.update({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"})
ray = pytest.importorskip("ray")  # the [ray] extra; the test extra installs it

from executor_toy import EngineFactory, ToyStudy, kill_driver_after  # noqa: E402

from charbench.config import CommonOptions  # noqa: E402
from charbench.executors.base import LocalExecutor  # noqa: E402
from charbench.executors.ray_exec import RayExecutor  # noqa: E402
from charbench.results import RunStore  # noqa: E402
from charbench.study import RunSettings, run_study  # noqa: E402

SETTINGS = RunSettings(sample_interval_s=0)
# slow: a shared 2-node cluster (about 15 s to start) and 7 tests in about 40 s on 2 busy cores; `-m 'not slow'` skips them
pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]


def _ray_common(tmp_path: Path, **kw) -> CommonOptions:
    return CommonOptions(out=tmp_path / "runs", device="cpu", executor="ray", **kw)


def _wait_for(pred, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, f"{what} did not happen in {timeout_s} s"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    from ray.cluster_utils import Cluster

    # fast health checks: a removed node is declared dead in about 2 s instead of about 30
    health = {"health_check_period_ms": 500, "health_check_failure_threshold": 3, "health_check_timeout_ms": 500}
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "_system_config": health})
    for tag in ("model_a", "model_b"):  # a custom resource per node, as a GPU model's tag would be
        c.add_node(num_cpus=1, object_store_memory=100 << 20, resources={tag: 1})
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
    nodes = json.loads((remote.run_dir / "nodes.json").read_text())
    assert sorted(nodes) == sorted({r["node"] for r in b}) and all(n["env"]["python"] for n in nodes.values())
    assert all(r["point_started_at"] < r["point_ended_at"] for r in b)
    # the report's node sections, as data: one Nodes row per node, the split by node, which node ran which point
    from report_content import capture_sections

    from charbench.executors import report_section
    from charbench.report import RunData

    assert remote.report is not None and remote.report.is_file()
    content = capture_sections(report_section.node_sections, report_section, RunData.load(remote.run_dir))
    by_node = {n: sorted(r["point_key"] for r in b if r["node"] == n) for n in nodes}
    table = content.table_with_column("idle baseline")
    assert sorted(table["node"]) == sorted(nodes) and {r["node"]: int(r["points"]) for _, r in table.iterrows()} == {
        n: len(k) for n, k in by_node.items()}
    split = next(t for t in content.tables if any(str(c).startswith("median ") for c in t.columns))  # one GPU model: split by node
    assert {str(r["node"]): int(r["points"]) for _, r in split.iterrows()} == {n: len(k) for n, k in by_node.items()}
    frame = pd.DataFrame(b)
    for col in (c for c in split.columns if str(c).startswith("median ")):  # each metric's median per node, from the records
        assert list(split[col]) == [frame[frame["node"] == n][col[len("median "):]].median() for n in split["node"]], col
    timeline = next(f for f in content.figures if f.data and f.data[0].type == "bar")
    assert {t.name: sorted(t.text) for t in timeline.data} == by_node


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


def test_serve_sweep_builds_its_engine_once_per_group_on_its_node(tmp_path: Path, cluster) -> None:
    from charbench.workloads.serving.config import ServeSweepConfig
    from charbench.workloads.serving.run import ServeSweepStudy

    marks = tmp_path / "marks"
    marks.mkdir()
    cfg = ServeSweepConfig(request_rate_rps=[math.inf, 40.0], max_num_seqs=[2, 4], input_len=[8], output_len=[6], num_requests=8,
                           warmup_requests=1, slo_ttft_ms=200.0, slo_tpot_ms=50.0)
    res = run_study(ServeSweepStudy(cfg, target_factory=EngineFactory(str(marks))), _ray_common(tmp_path), SETTINGS, executor=RayExecutor())
    assert res.status == "completed" and res.points_done == 4
    builds = sorted(marks.glob("engine-*"))
    assert sorted(p.name.split("-")[1] for p in builds) == ["2", "4"]  # one engine per max_num_seqs group, not one per point
    rows = RunStore.open(res.run_dir).records()
    for mns in (2, 4):
        [build] = [p for p in builds if p.name.split("-")[1] == str(mns)]
        ran_on = {r["node"] for r in rows if r["max_num_seqs"] == mns}
        assert len(ran_on) == 1 and next(iter(ran_on)).endswith(build.read_text()[:8])  # the group's points ran where its engine was built
    assert {r["completed_count"] for r in rows} == {8}


def test_killed_node_loses_no_finished_point_and_its_unfinished_one_is_retried(tmp_path: Path, cluster, capsys) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    killed: list[str] = []

    def kill_the_node_running_x1() -> None:
        _wait_for(lambda: (marks / "running-1").exists(), 60, "point x=1 starting")
        node_id = (marks / "running-1").read_text().split()[0]
        [node] = [n for n in cluster.worker_nodes if n.node_id == node_id]
        killed.append(node_id)
        cluster.remove_node(node, allow_graceful=False)

    killer = threading.Thread(target=kill_the_node_running_x1, daemon=True)
    killer.start()
    tags = {n["NodeID"]: [k for k in n["Resources"] if k.startswith("model_")] for n in ray.nodes() if n["Alive"]}
    try:
        res = run_study(ToyStudy(4, marks=str(marks), group_by=("pair",), hang_at=(1,)), _ray_common(tmp_path), SETTINGS,
                        executor=RayExecutor(max_retries=1))
    finally:
        killer.join(timeout=60)
        lost_tags = tags.get(killed[0], ["model_a"]) if killed else []
        if killed:  # two nodes again for the other tests, with the lost one's tag
            cluster.add_node(num_cpus=1, object_store_memory=100 << 20, resources={t: 1 for t in lost_tags})
    assert killed and res.status == "completed" and res.points_failed == 0
    rows = sorted(RunStore.open(res.run_dir).records(), key=lambda r: r["x"])
    assert [r["x"] for r in rows] == [0, 1, 2, 3]  # none lost, none doubled
    # x=0 finished on the killed node and was streamed back before the kill: kept, not measured again
    assert rows[0]["node"].endswith(killed[0][:8]) and not rows[1]["node"].endswith(killed[0][:8])
    err = capsys.readouterr().err
    assert f"worker lost on vm/{killed[0][:8]}" in err.replace(os.uname().nodename, "vm") and "retrying 1 point(s) (attempt 2 of 2)" in err


def test_driver_killed_mid_sweep_then_resume_completes_with_nothing_lost_or_doubled(tmp_path: Path, cluster) -> None:
    out = tmp_path / "runs"
    run_dir = kill_driver_after(["ray", str(out), "6", "0.6", cluster.address], out, done_at_least=2)
    before = RunStore.open(run_dir).completed_keys()
    assert 2 <= len(before) < 6
    res = run_study(ToyStudy(6, work_s=0.6), _ray_common(tmp_path, resume=run_dir), SETTINGS, executor=RayExecutor())
    assert res.status == "completed" and res.points_done == 6
    rows = RunStore.open(run_dir).records()
    assert sorted(r["x"] for r in rows) == [0, 1, 2, 3, 4, 5]


def test_ctrl_c_cancels_remote_work_restores_clocks_on_every_node_and_the_run_finishes_locally(tmp_path: Path, cluster) -> None:
    import socket

    marks = tmp_path / "marks"
    marks.mkdir()

    def stored() -> int:
        runs = list((tmp_path / "runs" / "toy").glob("*/run.json"))
        try:
            return len(RunStore.open(runs[0].parent).completed_keys()) if runs else 0
        except Exception:  # a part being written: look again
            return 0

    def ctrl_c_when_both_nodes_hang() -> None:
        try:  # x=0 and x=1 stored by the driver, x=2 and x=3 hanging, one on each node
            _wait_for(lambda: len(list(marks.glob("running-*"))) == 2 and stored() == 2, 60, "two points stored and two hanging")
        finally:
            _thread.interrupt_main()  # what Ctrl-C does to the driver

    threading.Thread(target=ctrl_c_when_both_nodes_hang, daemon=True).start()
    study = ToyStudy(6, marks=str(marks), hang_at=(2, 3), fake_control=True)
    with pytest.raises(KeyboardInterrupt):
        run_study(study, _ray_common(tmp_path), SETTINGS, executor=RayExecutor())
    hanging = {p.read_text().split()[0] for p in marks.glob("running-*")}
    assert len(hanging) == 2  # one point hung on each node
    # the cancelled units restored their node's clocks before the driver returned
    assert hanging <= {p.read_text() for p in marks.glob("restored-*")}
    [run_dir] = list((tmp_path / "runs" / "toy").iterdir())
    assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"
    done_on_ray = RunStore.open(run_dir).completed_keys()
    assert done_on_ray == {"pair=0,x=0", "pair=0,x=1"}
    # --resume with another executor: the points Ray finished are kept, the rest run here
    res = run_study(ToyStudy(6), CommonOptions(out=tmp_path / "runs", device="cpu", resume=run_dir), SETTINGS, executor=LocalExecutor())
    assert res.status == "completed" and res.points_done == 6 and res.points_failed == 0
    rows = sorted(RunStore.open(run_dir).records(), key=lambda r: r["x"])
    assert [r["x"] for r in rows] == [0, 1, 2, 3, 4, 5]
    assert all("/" in r["node"] for r in rows[:2]) and {r["node"] for r in rows[2:]} == {socket.gethostname()}


def test_ray_resource_sends_every_unit_to_the_nodes_that_have_it(tmp_path: Path, cluster) -> None:
    [tagged] = [n["NodeID"] for n in ray.nodes() if n["Alive"] and "model_b" in n["Resources"]]
    res = run_study(ToyStudy(4), _ray_common(tmp_path, ray_resources={"model_b": 1.0}), SETTINGS, executor=RayExecutor(resources={"model_b": 1.0}))
    assert res.points_done == 4
    assert {r["node"].split("/")[-1] for r in RunStore.open(res.run_dir).records()} == {tagged[:8]}
