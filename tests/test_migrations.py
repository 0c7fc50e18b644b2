"""run.json format versions: old folders are migrated when opened, newer ones refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from charbench import migrations, results
from charbench.config import CommonOptions
from charbench.errors import RunStoreError
from charbench.migrations import FORMAT_VERSION, MIGRATIONS, migrate
from charbench.results import RunStore
from charbench.study import Context, RunSettings, Study, run_study
from charbench.sweep import point_key


class Counter(Study):
    name = "counter"

    def points(self) -> list[dict[str, Any]]:
        return [{"i": i} for i in range(3)]

    def run_point(self, params: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return {"x_count": params["i"] * 10}


def _old_folder(root: Path, **meta: Any) -> Path:
    """A run folder as charbench wrote them before format versions: one results.parquet + .csv, no format_version."""
    run = root / "counter" / "20250101-000000-old"
    run.mkdir(parents=True)
    run_meta = {"study": "counter", "label": "old", "run_id": run.name, "meta": {}, "status": "interrupted",
                "started": "2025-01-01T00:00:00+00:00", "finished": "2025-01-01T00:01:00+00:00", "points_total": 3,
                "points_done": 1, "points_failed": 0, "report_hook": None, "device": "cpu", **meta}
    (run / "run.json").write_text(json.dumps(run_meta))
    (run / "config.json").write_text(json.dumps({"study": "counter", "common": {}, "settings": {}, "study_config": {}}))
    (run / "env.json").write_text(json.dumps({"python": "3.11"}))
    df = pd.DataFrame([{"point_key": point_key({"i": 0}), "point_index": 0, "i": 0, "x_count": 0}])
    df.to_parquet(run / "results.parquet", index=False)
    (run / "results.csv").write_text(df.to_csv(index=False))
    return run


def test_old_folder_opens_migrates_renders_and_resumes(tmp_path: Path) -> None:
    run = _old_folder(tmp_path)
    store = RunStore.open(run)
    assert store.meta["format_version"] == FORMAT_VERSION == 3
    assert store.meta["column_renames"] == ["002-metric-names"] and store.meta["config_reshapes"] == ["003-runner-settings"]
    assert store.meta["tables"] == {} and store.meta["pid"] is None and store.meta["host"] is None
    assert json.loads((run / "run.json").read_text()) == store.meta  # written back: the folder is writable
    assert store.completed_keys() == {"i=0"}

    from charbench.report import render_run

    assert render_run(run).is_file()
    from charbench.report import RunData, _display_frame

    old = RunData.load(run)
    assert old.meta["run_id"] == "20250101-000000-old" and _display_frame(old.results).to_dict("records") == [
        {"point_key": "i=0", "i": 0, "x_count": 0}]  # the points table of the old folder

    res = run_study(Counter(), CommonOptions(out=tmp_path, device="cpu", resume=run), RunSettings(sample_interval_s=0))
    assert res.status == "completed" and res.run_dir == run and res.points_done == 3
    assert [r["x_count"] for r in RunStore.open(run).records()] == [0, 10, 20]
    assert list(pd.read_parquet(run / "results.parquet")["point_key"]) == ["i=0", "i=1", "i=2"]
    assert pd.read_csv(run / "results.csv")["x_count"].tolist() == [0, 10, 20]
    assert not (run / "results.parts").exists()


def test_hand_made_folder_gets_every_field_readers_use(tmp_path: Path) -> None:
    run = tmp_path / "bare"
    run.mkdir()
    (run / "run.json").write_text('{"study": "counter"}')
    meta = RunStore.open(run).meta
    assert meta == {"study": "counter", "label": "", "run_id": "bare", "meta": {}, "status": None, "started": None, "finished": None,
                    "points_total": None, "points_done": None, "points_failed": None, "report_hook": None, "device": None,
                    "pid": None, "host": None, "tables": {}, "column_renames": ["002-metric-names"],
                    "config_reshapes": ["003-runner-settings"], "format_version": 3}
    from charbench.report import render_run

    assert render_run(run).read_text().startswith("<!DOCTYPE html>")  # no field missing in the template


def test_read_only_folder_is_migrated_in_memory_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = _old_folder(tmp_path)
    before = (run / "run.json").read_text()

    def read_only(path: Path, obj: Any) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(results, "atomic_write_json", read_only)
    store = RunStore.open(run)
    assert store.meta["format_version"] == 3 and (run / "run.json").read_text() == before


def test_current_folders_are_created_at_the_current_version_and_not_rewritten(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path, "counter", config={}, env={})
    assert json.loads((store.path / "run.json").read_text())["format_version"] == FORMAT_VERSION
    stamp = (store.path / "run.json").stat().st_mtime_ns
    assert RunStore.open(store.path).meta == store.meta
    assert (store.path / "run.json").stat().st_mtime_ns == stamp


def test_newer_format_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _old_folder(tmp_path, format_version=FORMAT_VERSION + 1)
    msg = f"{run}: run.json format_version {FORMAT_VERSION + 1} is newer than this charbench supports ({FORMAT_VERSION}); upgrade charbench"
    with pytest.raises(RunStoreError) as ei:
        RunStore.open(run)
    assert str(ei.value) == msg
    from charbench.cli import main

    assert main(["report", str(run)]) == 1
    err = capsys.readouterr().err
    assert err == f"Error: {msg}\n"


@pytest.mark.parametrize("bad", ["1", -1, 1.5, True])
def test_format_version_must_be_a_whole_number(tmp_path: Path, bad: Any) -> None:
    run = _old_folder(tmp_path, format_version=bad)
    with pytest.raises(RunStoreError) as ei:
        RunStore.open(run)
    assert str(ei.value) == f"{run}: run.json format_version {bad!r} is not a whole number >= 0; the run folder is damaged"


def test_old_serve_sweep_request_files_become_tables(tmp_path: Path) -> None:
    run = _old_folder(tmp_path)
    (run / "requests").mkdir()
    pd.DataFrame({"ttft_ms": [1.0, 2.0, 3.0], "error": [None, None, "x"]}).to_parquet(run / "requests" / "rate=1.parquet", index=False)
    (run / "requests" / "torn.parquet").write_bytes(b"junk")
    store = RunStore.open(run)
    assert store.tables() == {"requests/rate=1": {"rows": 3, "columns": ["ttft_ms", "error"], "file": "requests/rate=1.parquet"}}
    assert list(store.read_table("requests/rate=1")["ttft_ms"]) == [1.0, 2.0, 3.0]


def test_migrations_are_numbered_one_by_one_and_applied_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert [n for n, _, _ in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    seen: list[int] = []

    def step(n: int) -> Any:
        return lambda meta, run_dir: (seen.append(n), {**meta, f"m{n}": meta.get("format_version", 0)})[1]

    monkeypatch.setattr(migrations, "MIGRATIONS", [(1, "a", step(1)), (2, "b", step(2)), (3, "c", step(3))])
    monkeypatch.setattr(migrations, "FORMAT_VERSION", 3)
    meta, applied = migrate({"study": "s", "format_version": 1}, tmp_path)
    assert applied and seen == [2, 3] and meta == {"study": "s", "format_version": 3, "m2": 1, "m3": 2}
    assert migrate(meta, tmp_path) == (meta, False)


def test_old_columns_are_renamed_on_read_and_compare_against_an_old_baseline(tmp_path: Path) -> None:
    """Migration 2: a folder from before the naming rule reads under today's names (reasons and provenance too)."""
    run = _old_folder(tmp_path, format_version=1)
    df = pd.DataFrame([{
        "point_key": "i=0", "point_index": 0, "i": 0, "avg_power_w": 120.0, "gpu0_power_mean_w": 118.0, "gpu0_temp_max_c": 61.0,
        "energy_per_gemm_net_j": None, "num_requests": 16, "gpu0_throttle_reasons": "",
        "null_reasons": json.dumps({"energy_per_gemm_net_j": "no idle baseline"}), "provenance": json.dumps({"avg_power_w": "nvml"}),
    }])
    df.to_parquet(run / "results.parquet", index=False)
    (rec,) = RunStore.open(run).records()
    assert sorted(rec) == ["energy_net_per_gemm_j", "gpu0_throttle_reasons", "i", "max_gpu0_temp_c", "mean_gpu0_power_w", "mean_power_w",
                           "null_reasons", "point_index", "point_key", "provenance", "request_count"]
    assert (rec["mean_power_w"], rec["mean_gpu0_power_w"], rec["request_count"]) == (120.0, 118.0, 16)
    assert json.loads(rec["null_reasons"]) == {"energy_net_per_gemm_j": "no idle baseline"}
    assert json.loads(rec["provenance"]) == {"mean_power_w": "nvml"}
    # a folder written today is read as written
    new = RunStore.create(tmp_path, "counter", config={}, env={})
    new.append_records([{"point_key": "a", "avg_power_w": 1.0}])
    assert "column_renames" not in new.meta and list(RunStore.open(new.path).records()[0]) == ["point_key", "avg_power_w"]


def test_rename_002_maps_every_old_spelling_once() -> None:
    from charbench.migrations import rename_002

    assert [rename_002(n) for n in ("gpu0_power_mean_w", "gpu3_power_p95_w", "steady_gpu0_sm_clock_mean_mhz", "cpu_dram_power_mean_w",
                                     "steady_avg_power_w", "output_tokens_per_net_j", "p99_ttft_ms", "mean_gpu0_power_w")] == [
        "mean_gpu0_power_w", "p95_gpu3_power_w", "mean_steady_gpu0_sm_clock_mhz", "mean_cpu_dram_power_w",
        "mean_steady_power_w", "output_per_energy_net_tok_j", "p99_ttft_ms", "mean_gpu0_power_w"]


def test_unknown_column_renames_are_refused(tmp_path: Path) -> None:
    run = _old_folder(tmp_path, format_version=2, column_renames=["999-future"])
    with pytest.raises(RunStoreError, match=r"run.json column_renames 999-future unknown to this charbench; upgrade charbench"):
        RunStore.open(run).records()
