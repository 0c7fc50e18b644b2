"""--executor slurm-local (submitit's local executor standing in for SLURM): one run folder, nothing lost or doubled."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
from executor_toy import ToyStudy

from charbench.config import CommonOptions
from charbench.errors import CharbenchError, ConfigError
from charbench.executors import make_executor
from charbench.executors.base import Detached, LocalExecutor
from charbench.executors.slurm import SlurmExecutor
from charbench.results import RunStore
from charbench.study import RunSettings, run_study

SETTINGS = RunSettings(sample_interval_s=0)


def _common(tmp_path: Path, **kw) -> CommonOptions:
    return CommonOptions(out=tmp_path / "runs", device="cpu", **kw)


def _rows(run_dir: Path) -> list[dict]:
    return sorted(RunStore.open(run_dir).records(), key=lambda r: r["x"])


def test_slurm_local_gives_the_local_points_with_node_names(tmp_path: Path) -> None:
    local = run_study(ToyStudy(4), _common(tmp_path), SETTINGS, executor=LocalExecutor())
    remote = run_study(ToyStudy(4), _common(tmp_path, executor="slurm-local"), SETTINGS, executor=SlurmExecutor(local=True))
    a, b = _rows(local.run_dir), _rows(remote.run_dir)
    assert [(r["point_key"], r["x"], r["pair"], r["y"]) for r in a] == [(r["point_key"], r["x"], r["pair"], r["y"]) for r in b]
    assert [r["node"] for r in b] == [socket.gethostname()] * 4 == [r["node"] for r in a]
    assert json.loads(b[0]["null_reasons"])["gpu"] == "no GPU: the point ran on cpu"
    assert len({r["pid"] for r in b}) == 4  # one job (process) per point: the study has no resource knobs
    assert remote.status == "completed" and remote.points_done == 4
    nodes = json.loads((remote.run_dir / "nodes.json").read_text())
    assert list(nodes) == [socket.gethostname()] and nodes[socket.gethostname()]["env"]["hostname"] == socket.gethostname()


def test_detach_then_resume_collects_finished_jobs_and_resubmits_missing(tmp_path: Path) -> None:
    ex = SlurmExecutor(local=True, detach=True)
    with pytest.raises(Detached, match=r"4 job\(s\) keep running; collect them with --resume"):
        run_study(ToyStudy(4), _common(tmp_path, executor="slurm-local", detach=True), SETTINGS, executor=ex)
    run_dir = next((tmp_path / "runs" / "toy").iterdir())
    assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"
    ledger = json.loads((run_dir / "executor" / "jobs.json").read_text())
    assert len(ledger) == 4
    import submitit

    jobs = {u: submitit.local.local.LocalJob(run_dir / "executor" / "jobs" / e["job_id"], e["job_id"]) for u, e in ledger.items()}
    deadline = time.monotonic() + 60
    while not all(j.paths.result_pickle.exists() for j in jobs.values()):  # the detached jobs finish on their own
        assert time.monotonic() < deadline, "detached jobs did not finish in 60 s"
        time.sleep(0.1)
    # one job "never ran": its result and staged batches are gone, and its process is long dead
    lost_unit = sorted(ledger)[0]
    jobs[lost_unit].paths.result_pickle.unlink()
    for p in (run_dir / "executor" / "stage").glob(f"{lost_unit}_*.pkl"):
        p.unlink()
    again = run_study(ToyStudy(4), _common(tmp_path, executor="slurm-local", resume=run_dir), SETTINGS, executor=SlurmExecutor(local=True))
    assert again.status == "completed" and again.points_done == 4 and again.points_failed == 0
    rows = _rows(run_dir)
    assert [r["x"] for r in rows] == [0, 1, 2, 3]  # no point lost, none doubled
    after = json.loads((run_dir / "executor" / "jobs.json").read_text())
    resubmitted = [u for u in after if after[u]["job_id"] != ledger[u]["job_id"]]
    assert resubmitted == [lost_unit] and after[lost_unit]["attempt"] == 1


def test_killed_job_is_retried_and_no_point_is_lost_or_doubled(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    res = run_study(ToyStudy(4, die_at=(1,), marks=str(marks), group_by=("pair",)), _common(tmp_path, executor="slurm-local"), SETTINGS,
                    executor=SlurmExecutor(local=True, max_retries=1))
    rows = _rows(res.run_dir)
    assert [r["x"] for r in rows] == [0, 1, 2, 3] and res.points_failed == 0
    # x=0 finished before its job died: it was collected from the staging area, not run again
    assert rows[0]["pid"] != rows[1]["pid"] and rows[2]["pid"] == rows[3]["pid"]


def test_killed_job_past_its_retries_is_a_failure_naming_node_and_exit(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    res = run_study(ToyStudy(4, die_at=(2,), marks=str(marks)), _common(tmp_path, executor="slurm-local", continue_on_error=True), SETTINGS,
                    executor=SlurmExecutor(local=True, max_retries=0))
    assert [r["x"] for r in _rows(res.run_dir)] == [0, 1, 3] and res.points_failed == 1
    [fail] = RunStore.open(res.run_dir).failures()
    assert fail["error_type"] == "WorkerLost" and fail["node"] == socket.gethostname()
    assert fail["message"].startswith(f"worker lost on {socket.gethostname()}: job ")
    assert fail["message"].endswith("ended without a result (controller exit status 0) (after 1 attempt(s); --max-retries 0)")


def test_lost_job_without_continue_on_error_stops_the_run(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    with pytest.raises(CharbenchError, match=r"worker lost on .*--max-retries 0\); completed points are kept in .*--continue-on-error"):
        run_study(ToyStudy(2, die_at=(0,), marks=str(marks)), _common(tmp_path), SETTINGS, executor=SlurmExecutor(local=True, max_retries=0))


def test_slurm_without_sbatch_names_slurm_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConfigError, match=r"^--executor slurm: sbatch is not on PATH \(this machine is not a SLURM submit node\); run from a "
                                          r"login node, or use --executor slurm-local to run the same jobs as local processes$"):
        run_study(ToyStudy(2), _common(tmp_path), SETTINGS, executor=make_executor(_common(tmp_path, executor="slurm")))
    assert not (tmp_path / "runs").exists()  # refused before a run folder was made


def test_ordered_study_is_refused_off_this_machine(tmp_path: Path) -> None:
    study = ToyStudy(2)
    study.ordered = True
    with pytest.raises(ConfigError, match=r"^--executor slurm-local: toy runs its points in order with state carried between them, which "
                                          r"cannot be spread over workers; use --executor local$"):
        run_study(study, _common(tmp_path), SETTINGS, executor=SlurmExecutor(local=True))


def test_executor_options_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"^--executor: 'k8s' is not one of local, ray, slurm, slurm-local$"):
        make_executor(CommonOptions(executor="k8s"))
    with pytest.raises(ConfigError, match=r"^--ray-address: only --executor ray connects to Ray \(this run uses --executor local\)"):
        make_executor(CommonOptions(ray_address="auto"))
    # the executor options' ranges are declared on CommonOptions, like every numeric option
    with pytest.raises(ConfigError, match=r"^--max-retries must be an integer >= 0 and <= 100 \(got -1\)$"):
        CommonOptions(max_retries=-1)
    with pytest.raises(ConfigError, match=r"^--slurm-time must be an integer >= 1 and <= 43200 \(got 0\)$"):
        CommonOptions(slurm_time_min=0)
