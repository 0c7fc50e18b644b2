"""--executor slurm-local (submitit's local executor standing in for SLURM): one run folder, nothing lost or doubled."""

from __future__ import annotations

import _thread
import json
import math
import socket
import threading
import time
from pathlib import Path

import pytest
from executor_toy import EngineFactory, ToyStudy, kill_driver_after

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


@pytest.mark.slow  # local jobs: one Python process each
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


@pytest.mark.slow  # local jobs: one Python process each
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


@pytest.mark.slow  # local jobs: one Python process each
def test_killed_job_is_retried_and_no_point_is_lost_or_doubled(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    res = run_study(ToyStudy(4, die_at=(1,), marks=str(marks), group_by=("pair",)), _common(tmp_path, executor="slurm-local"), SETTINGS,
                    executor=SlurmExecutor(local=True, max_retries=1))
    rows = _rows(res.run_dir)
    assert [r["x"] for r in rows] == [0, 1, 2, 3] and res.points_failed == 0
    # x=0 finished before its job died: it was collected from the staging area, not run again
    assert rows[0]["pid"] != rows[1]["pid"] and rows[2]["pid"] == rows[3]["pid"]


@pytest.mark.slow  # local jobs: one Python process each
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


def _wait_for(pred, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, f"{what} did not happen in {timeout_s} s"
        time.sleep(0.05)


@pytest.mark.slow  # local jobs: one Python process each
def test_serve_sweep_builds_its_engine_once_per_group_job(tmp_path: Path) -> None:
    from charbench.workloads.serving.config import ServeSweepConfig
    from charbench.workloads.serving.run import ServeSweepStudy

    marks = tmp_path / "marks"
    marks.mkdir()
    cfg = ServeSweepConfig(request_rate_rps=[math.inf, 40.0], max_num_seqs=[2, 4], input_len=[8], output_len=[6], num_requests=8,
                           warmup_requests=1, slo_ttft_ms=200.0, slo_tpot_ms=50.0)
    res = run_study(ServeSweepStudy(cfg, target_factory=EngineFactory(str(marks))), _common(tmp_path, executor="slurm-local"), SETTINGS,
                    executor=SlurmExecutor(local=True))
    assert res.status == "completed" and res.points_done == 4
    builds = sorted(marks.glob("engine-*"))
    assert sorted(p.name.split("-")[1] for p in builds) == ["2", "4"]  # one engine per group (one job each), not one per point
    rows = RunStore.open(res.run_dir).records()
    assert {r["completed_count"] for r in rows} == {8} and {r["node"] for r in rows} == {socket.gethostname()}
    tables = RunStore.open(res.run_dir).tables()
    assert len(tables) == 4 and all((res.run_dir / r["requests_file"]).is_file() for r in rows)  # per-request tables came back


@pytest.mark.slow  # local jobs: one Python process each
def test_driver_killed_mid_sweep_then_resume_reattaches_and_completes(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    run_dir = kill_driver_after(["slurm-local", str(out), "5", "0.5"], out, done_at_least=1)
    ledger = json.loads((run_dir / "executor" / "jobs.json").read_text())
    assert 1 <= len(ledger) < 5  # at most one job per core was out when the driver died
    res = run_study(ToyStudy(5, work_s=0.5), _common(tmp_path, executor="slurm-local", resume=run_dir), SETTINGS, executor=SlurmExecutor(local=True))
    assert res.status == "completed" and res.points_done == 5 and res.points_failed == 0
    assert [r["x"] for r in _rows(run_dir)] == [0, 1, 2, 3, 4]  # nothing lost, nothing doubled
    after = json.loads((run_dir / "executor" / "jobs.json").read_text())
    # the jobs the dead driver left running were collected, not submitted again
    assert all(after[u]["job_id"] == e["job_id"] for u, e in ledger.items())


@pytest.mark.slow  # local jobs: one Python process each
def test_ctrl_c_cancels_jobs_restores_clocks_and_resume_finishes_the_run(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()

    def ctrl_c_when_both_jobs_hang() -> None:
        _wait_for(lambda: len(list(marks.glob("running-*"))) == 2, 60, "two points hanging")
        _thread.interrupt_main()

    threading.Thread(target=ctrl_c_when_both_jobs_hang, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        run_study(ToyStudy(4, marks=str(marks), hang_at=(0, 1), fake_control=True), _common(tmp_path, executor="slurm-local"), SETTINGS,
                  executor=SlurmExecutor(local=True))
    hung_pids = {p.read_text().split()[1] for p in marks.glob("running-*")}
    restored = {p.name.split("-")[1] for p in marks.glob("restored-*")}
    assert len(hung_pids) == 2 and hung_pids <= restored  # each cancelled job restored its clocks before the driver returned
    [run_dir] = list((tmp_path / "runs" / "toy").iterdir())
    assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"
    res = run_study(ToyStudy(4), _common(tmp_path, executor="slurm-local", resume=run_dir), SETTINGS, executor=SlurmExecutor(local=True))
    assert res.status == "completed" and res.points_done == 4 and [r["x"] for r in _rows(run_dir)] == [0, 1, 2, 3]


def test_ray_resource_and_slurm_option_are_parsed_and_checked() -> None:
    from charbench.cli_common import common_options

    def opts(**dispatch):
        return common_options(None, "", None, "cpu", 0, None, None, False, False, **dispatch)

    c = opts(executor="ray", ray_resources=["A100=1", "fast=0.5"])
    assert c.ray_resources == {"A100": 1.0, "fast": 0.5} and make_executor(c).resources == {"A100": 1.0, "fast": 0.5}
    c = opts(executor="slurm-local", slurm_options=["account=proj42", "cpus-per-task=8"])
    assert make_executor(c).extra == {"account": "proj42", "cpus_per_task": "8"}
    with pytest.raises(ConfigError, match=r"^--ray-resource: expected NAME=AMOUNT with an amount > 0, got 'A100=nan'; e\.g\. --ray-resource A100=1"):
        opts(executor="ray", ray_resources=["A100=nan"])
    with pytest.raises(ConfigError, match=r"^--slurm-option time: set by charbench itself; use --slurm-time$"):
        opts(executor="slurm", slurm_options=["time=5"])
    with pytest.raises(ConfigError, match=r"^--slurm-option: expected KEY=VALUE, got 'account'; e\.g\. --slurm-option account=proj42"):
        opts(executor="slurm", slurm_options=["account"])
    with pytest.raises(ConfigError, match=r"^--ray-resource: only --executor ray schedules on Ray resources \(this run uses --executor slurm\)"):
        make_executor(opts(executor="slurm", ray_resources=["A100=1"]))
    with pytest.raises(ConfigError, match=r"^--slurm-option: only --executor slurm/slurm-local submit jobs \(this run uses --executor ray\)"):
        make_executor(opts(executor="ray", slurm_options=["account=x"]))


def test_slurm_option_reaches_the_sbatch_parameters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("srun", "sbatch"):  # stand-ins: submitit looks for srun when it is made; nothing is submitted here
        (bin_dir / tool).write_text("#!/bin/sh\nexit 0\n")
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    ex = SlurmExecutor(local=False, partition="gpu", gpus=2, time_min=30, extra={"account": "proj42", "constraint": "a100"})
    ex.check(ToyStudy(1))
    ex.start(SimpleNamespace(path=tmp_path / "run"), print)
    assert ex._ex.parameters == {"time": 30, "ntasks_per_node": 1, "partition": "gpu", "gpus_per_node": 2, "account": "proj42",
                                 "constraint": "a100"}
    with pytest.raises(ConfigError, match=r"^--slurm-option colour: not an sbatch setting submitit knows; use one of account, "):
        SlurmExecutor(local=False, extra={"colour": "red"}).check(ToyStudy(1))
