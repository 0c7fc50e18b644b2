"""The spine's study lifecycle with test studies: resource groups, open/close windows,
ordered studies with checkpoints and resume, non-measuring studies, and the prepare cache.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from charbench.config import CommonOptions
from charbench.errors import CharbenchError, ConfigError, RunStoreError
from charbench.measure.testing import FakeGpu, fake_nvml
from charbench.record import Record
from charbench.prepare_cache import PrepareCache, cache_key
from charbench.results import RunStore
from charbench.study import PROV_SIMULATED, Context, RunSettings, Study, group_points, run_study
from charbench.sweep import expand

QUIET = RunSettings(sample_interval_s=0)


def _common(tmp_path: Path, **kw: Any) -> CommonOptions:
    return CommonOptions(out=tmp_path / "runs", device="cpu", json=True, **kw)


# -- resource groups -------------------------------------------------------------------
@dataclass
class GroupCfg:
    models: tuple[str, ...] = ("a", "b")
    sizes: tuple[int, ...] = (1, 2, 3)


class Grouped(Study):
    """Points over (model, size); one 'engine' per model, recorded in ``events``."""

    name = "grouped"
    resource_knobs = ("model",)

    def __init__(self, cfg: GroupCfg | None = None, fail_acquire: str | None = None, fail_point: tuple[str, int] | None = None) -> None:
        self.cfg = cfg or GroupCfg()
        self.fail_acquire = fail_acquire
        self.fail_point = fail_point
        self.events: list[str] = []

    def points(self) -> list[dict[str, Any]]:
        # size varies slowest here on purpose: the runner must regroup by model
        return [{"size": s, "model": m} for s in self.cfg.sizes for m in self.cfg.models]

    def acquire(self, group: dict[str, Any], ctx: Context) -> Any:
        self.events.append(f"acquire {group['model']}")
        if group["model"] == self.fail_acquire:
            raise RuntimeError("engine would not start")
        return {"engine": group["model"]}

    def release(self, resource: Any, ctx: Context) -> None:
        self.events.append(f"release {resource['engine']}")

    def run_point(self, params: dict[str, Any], ctx: Context) -> dict[str, Any]:
        assert ctx.resource == {"engine": params["model"]}
        self.events.append(f"run {params['model']}{params['size']}")
        if (params["model"], params["size"]) == self.fail_point:
            raise ValueError("bad point")
        return {"value_count": params["size"]}


def test_group_points_keeps_first_appearance_order() -> None:
    keyed = [(str(i), p) for i, p in enumerate([{"m": "b", "s": 1}, {"m": "a", "s": 1}, {"m": "b", "s": 2}, {"m": "a", "s": 2}])]
    assert [k for k, _ in group_points(keyed, ("m",))] == ["0", "2", "1", "3"]
    assert group_points(keyed, ()) == keyed


def test_resource_acquired_once_per_group_and_released(tmp_path: Path) -> None:
    study = Grouped()
    res = run_study(study, _common(tmp_path), QUIET)
    assert res.status == "completed" and res.points_done == 6
    assert study.events == [
        "acquire a", "run a1", "run a2", "run a3", "release a",
        "acquire b", "run b1", "run b2", "run b3", "release b",
    ]


def test_resource_released_when_a_point_fails(tmp_path: Path) -> None:
    study = Grouped(fail_point=("a", 2))
    with pytest.raises(CharbenchError, match="point model=a,size=2 failed"):
        run_study(study, _common(tmp_path), QUIET)
    assert study.events == ["acquire a", "run a1", "run a2", "release a"]


def test_failed_acquire_fails_its_group_and_continues(tmp_path: Path) -> None:
    study = Grouped(fail_acquire="a")
    res = run_study(study, _common(tmp_path, continue_on_error=True), QUIET)
    assert study.events == ["acquire a", "acquire b", "run b1", "run b2", "run b3", "release b"]
    assert res.points_done == 3 and res.points_failed == 3
    store = RunStore.open(res.run_dir)
    assert sorted(f["point_key"] for f in store.failures()) == ["model=a,size=1", "model=a,size=2", "model=a,size=3"]
    assert {f["message"] for f in store.failures()} == {"engine would not start"}


def test_failed_acquire_without_continue_stops_the_run(tmp_path: Path) -> None:
    with pytest.raises(CharbenchError, match=r"the resource for model=a could not be acquired \(RuntimeError: engine would not start\)"):
        run_study(Grouped(fail_acquire="a"), _common(tmp_path), QUIET)


def test_resume_skips_finished_groups(tmp_path: Path) -> None:
    first = Grouped(fail_point=("b", 2))
    with pytest.raises(CharbenchError):
        run_study(first, _common(tmp_path), QUIET)
    run_dir = next((tmp_path / "runs" / "grouped").iterdir())
    again = Grouped()
    res = run_study(again, _common(tmp_path, resume=run_dir), QUIET)
    assert res.points_done == 6
    assert again.events == ["acquire b", "run b2", "run b3", "release b"]


def test_reacquire_replaces_the_resource(tmp_path: Path) -> None:
    class Dies(Grouped):
        def run_point(self, params: dict[str, Any], ctx: Context) -> dict[str, Any]:
            if params["size"] == 2:
                ctx.reacquire()
            return super().run_point(params, ctx)

    study = Dies(GroupCfg(models=("a",)))
    run_study(study, _common(tmp_path), QUIET)
    assert study.events == ["acquire a", "run a1", "release a", "acquire a", "run a2", "run a3", "release a"]


# -- windows you open and close -----------------------------------------------------------
class Windows(Study):
    name = "windows"

    def points(self) -> list[dict[str, Any]]:
        return expand({"i": [0]})

    def run_point(self, params: dict[str, Any], ctx: Context) -> dict[str, Any]:
        ctx.begin_window("whole")
        ctx.begin_window("steady", t=100.0)
        steady = ctx.end_window("steady", t=102.5)
        ctx.begin_window("dropped")
        ctx.cancel_window("dropped")
        ctx.cancel_window("never-opened")
        with pytest.raises(ValueError, match="window 'whole' is already open; end_window or cancel_window it first"):
            ctx.begin_window("whole")
        with pytest.raises(ValueError, match=r"window 'dropped' is not open \(begin_window it first\)"):
            ctx.end_window("dropped")
        ctx.begin_window("left-open")
        whole = ctx.end_window("whole")
        assert ctx.open_windows() == ["left-open"]
        return {"steady_time_s": steady.time_s, "whole_ok_count": int(whole.time_s > 0)}


def test_begin_end_cancel_windows(tmp_path: Path) -> None:
    res = run_study(Windows(), _common(tmp_path), QUIET)
    rec = RunStore.open(res.run_dir).records()[0]
    assert rec["steady_time_s"] == 2.5
    assert rec["whole_ok_count"] == 1


def test_subset_meters_and_controls_are_released(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from charbench import measure

    real_timer = measure.Timer
    monkeypatch.setattr(measure, "Timer", lambda device: real_timer("cpu"))  # no CUDA here; NVML is faked
    gpus = [FakeGpu(), FakeGpu(uuid="GPU-2", pci_bus_id="00000000:19:00.0")]
    with fake_nvml(gpus):
        store = RunStore.create(tmp_path, "t", config={}, env={})
        ctx = Context("cuda:0", store, 0, QUIET, print, gpus=[0, 1])
        sub = ctx.meter_for([1])
        assert ctx.meter_for([1]) is sub and ctx.meter_for([0, 1]) is ctx.meter
        ctl = ctx.control_for([1])
        ctl.lock_sm_clock(1200)
        with ctx.window("w", gpus=[1]) as w:
            pass
        assert set(w.measurement.energy_j) == {"gpu1"}
        assert gpus[1].locked_clocks_mhz == (1200, 1200)
        ctx.close()
        assert gpus[1].locked_clocks_mhz is None


# -- ordered, stateful studies ---------------------------------------------------------------
class Epochs(Study):
    """Each point is an epoch that adds to a running total kept in a checkpoint."""

    name = "epochs"
    ordered = True

    def __init__(self, epochs: int = 4, crash_on: int | None = None) -> None:
        self.cfg = {"epochs": epochs}
        self.crash_on = crash_on
        self.started_from: Any = "unset"
        self.total = 0

    def points(self) -> list[dict[str, Any]]:
        return expand({"epoch": list(range(self.cfg["epochs"]))})

    def setup(self, ctx: Context) -> None:
        self.started_from = ctx.restore_checkpoint()
        self.total = (self.started_from or {}).get("total", 0)

    def run_point(self, params: dict[str, Any], ctx: Context) -> dict[str, Any]:
        if params["epoch"] == self.crash_on:
            raise ValueError("diverged")
        self.total += params["epoch"] + 1
        ctx.checkpoint({"total": self.total})
        return {"total_count": self.total}


def test_ordered_study_refuses_shuffle(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--shuffle: epochs runs its points in order \(each continues the state of the one before\); drop --shuffle"):
        run_study(Epochs(), _common(tmp_path), RunSettings(sample_interval_s=0, shuffle=True))


def test_ordered_study_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CharbenchError, match=r"epochs runs its points in order, so the run stops here \(even with --continue-on-error\)"):
        run_study(Epochs(crash_on=2), _common(tmp_path, continue_on_error=True), QUIET)
    run_dir = next((tmp_path / "runs" / "epochs").iterdir())
    store = RunStore.open(run_dir)
    assert [r["total_count"] for r in store.records()] == [1, 3]
    assert store.checkpoint_key() == "epoch=1" and store.read_checkpoint() == {"total": 3}
    again = Epochs()
    res = run_study(again, _common(tmp_path, resume=run_dir), QUIET)
    assert again.started_from == {"total": 3}
    assert [r["total_count"] for r in RunStore.open(res.run_dir).records()] == [1, 3, 6, 10]


def test_ordered_resume_refuses_a_checkpoint_out_of_step(tmp_path: Path) -> None:
    with pytest.raises(CharbenchError):
        run_study(Epochs(crash_on=2), _common(tmp_path), QUIET)
    run_dir = next((tmp_path / "runs" / "epochs").iterdir())
    RunStore.open(run_dir).write_checkpoint({"total": 1}, "epoch=0")
    with pytest.raises(RunStoreError, match=r"the checkpoint was taken after 'epoch=0', not after the last completed point 'epoch=1'"):
        run_study(Epochs(), _common(tmp_path, resume=run_dir), QUIET)


# -- studies that do not measure ---------------------------------------------------------------
class Simulator(Study):
    name = "sim"
    measures = False

    def points(self) -> list[dict[str, Any]]:
        return expand({"rate_rps": [1.0, 2.0]})

    def run_point(self, params: dict[str, Any], ctx: Context) -> Record:
        assert ctx.sampler is None and ctx.baseline is None
        rec = Record({"p99_ttft_ms": 10.0 * params["rate_rps"], "served_count": 3, "policy": "static", "cost_usd": None})
        return rec.set("energy_j", 5.0, "estimated (power model)")


def test_non_measuring_study_stamps_every_value_estimated(tmp_path: Path) -> None:
    res = run_study(Simulator(), _common(tmp_path), RunSettings())  # a sampler interval is ignored
    rec = RunStore.open(res.run_dir).records()[0]
    prov = json.loads(rec["provenance"])
    assert prov == {"p99_ttft_ms": PROV_SIMULATED, "served_count": PROV_SIMULATED, "energy_j": "estimated (power model)"}
    assert json.loads(rec["null_reasons"]) == {"cost_usd": "not measured"}
    assert not (res.run_dir / "samples.parquet").exists()


def test_non_measuring_study_refuses_idle_baseline(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--idle-baseline: sim measures nothing \(its values are simulated\); drop --idle-baseline"):
        run_study(Simulator(), _common(tmp_path), RunSettings(idle_baseline_s=1.0))


# -- prepare and cache ---------------------------------------------------------------------------
class Prepared(Study):
    name = "prepared"

    def __init__(self, steps: int = 3) -> None:
        self.cfg = {"steps": steps}
        self.builds = 0

    def prepare_inputs(self) -> Any:
        return {"steps": self.cfg["steps"]}

    def prepare(self, cache_dir: Path, log: Any) -> None:
        self.builds += 1
        (cache_dir / "model.txt").write_text(str(self.cfg["steps"] * 7))

    def points(self) -> list[dict[str, Any]]:
        return expand({"i": [0, 1]})

    def run_point(self, params: dict[str, Any], ctx: Context) -> dict[str, Any]:
        assert ctx.cache_dir is not None
        return {"weight_count": int((ctx.cache_dir / "model.txt").read_text())}


def test_prepare_runs_once_and_hits_the_cache(tmp_path: Path, charbench_home: Path) -> None:
    first = Prepared()
    res = run_study(first, _common(tmp_path), QUIET)
    assert first.builds == 1
    key = cache_key("prepared", "1", {"steps": 3})
    entry = charbench_home / "cache" / "prepared" / key
    assert (entry / "model.txt").read_text() == "21"
    cfg = json.loads((res.run_dir / "config.json").read_text())
    assert cfg["prepare"] == {"key": key, "path": str(entry), "inputs": {"steps": 3}, "cache_hit": False}
    second = Prepared()
    res2 = run_study(second, _common(tmp_path), QUIET)
    assert second.builds == 0
    assert json.loads((res2.run_dir / "config.json").read_text())["prepare"]["cache_hit"] is True
    assert [r["weight_count"] for r in RunStore.open(res2.run_dir).records()] == [21, 21]
    other = Prepared(steps=4)
    run_study(other, _common(tmp_path), QUIET)
    assert other.builds == 1


def test_failed_prepare_leaves_no_entry(tmp_path: Path) -> None:
    class Broken(Prepared):
        def prepare(self, cache_dir: Path, log: Any) -> None:
            (cache_dir / "half.txt").write_text("x")
            raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        run_study(Broken(), _common(tmp_path), QUIET)
    root = PrepareCache.for_study("prepared").root
    assert not root.exists() or list(root.iterdir()) == []
    assert not (tmp_path / "runs" / "prepared").exists()


# -- named tables of any size ---------------------------------------------------------------
class Timeline(Study):
    """A simulator-like study that writes a 1M-row per-event table and appends per-point steps."""

    name = "timeline"
    measures = False

    def points(self) -> list[dict[str, Any]]:
        return expand({"i": [0, 1]})

    def run_point(self, params: dict[str, Any], ctx: Context) -> dict[str, Any]:
        import numpy as np
        import pandas as pd

        if params["i"] == 0:
            n = 1_000_000
            ctx.store.write_table("events", pd.DataFrame({"t_s": np.arange(n) * 1e-3, "power_w": np.full(n, 250.0)}))
        ctx.store.append_table("steps", pd.DataFrame({"point": [params["i"]] * 3, "step": [0, 1, 2]}))
        return {"rows_count": 1}


def test_a_million_row_table_and_appended_parts(tmp_path: Path) -> None:
    res = run_study(Timeline(), _common(tmp_path), QUIET)
    store = RunStore.open(res.run_dir)
    assert store.tables()["events"]["rows"] == 1_000_000
    events = store.read_table("events")
    assert len(events) == 1_000_000 and events["t_s"].iloc[-1] == pytest.approx(999.999)
    steps = store.read_table("steps")
    assert steps["point"].tolist() == [0, 0, 0, 1, 1, 1] and steps["step"].tolist() == [0, 1, 2, 0, 1, 2]
    assert store.tables()["steps"]["rows"] == 6
