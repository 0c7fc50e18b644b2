"""Append-only storage: results/samples parts, compaction at close, named tables."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest

from charbench import parts
from charbench.config import CommonOptions
from charbench.errors import RunStoreError
from charbench.parts import PartLog
from charbench.results import RunStore, _encode_mixed
from charbench.study import Context, RunSettings, Study, run_study


def _store(tmp_path: Path) -> RunStore:
    return RunStore.create(tmp_path, "toy", config={}, env={})


def _names(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def test_append_writes_one_part_and_never_rewrites_earlier_ones(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.append_record({"point_key": "a", "energy_j": 1.0})
    first = store.path / "results.parts" / "part-00000001.parquet"
    before = (first.read_bytes(), first.stat().st_mtime_ns)
    store.append_records([{"point_key": "b", "energy_j": 2.0}, {"point_key": "b", "energy_j": 2.5}])
    assert _names(store.path / "results.parts") == ["part-00000001.parquet", "part-00000002.parquet"]
    assert (first.read_bytes(), first.stat().st_mtime_ns) == before
    assert len(pd.read_parquet(store.path / "results.parts" / "part-00000002.parquet")) == 2  # only its own rows
    assert not (store.path / "results.parquet").exists() and not (store.path / "results.csv").exists()
    assert [r["energy_j"] for r in RunStore.open(store.path).records()] == [1.0, 2.0, 2.5]
    assert json.loads((store.path / "run.json").read_text())["points_done"] == 2


def test_append_reads_nothing_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = RunStore.open(_store(tmp_path).path)  # an opened store counts its keys and failures once
    store.append_record({"point_key": "a", "energy_j": 1.0})

    def no_reads(*a: Any, **k: Any) -> Any:
        raise AssertionError("an append reread the run folder")

    monkeypatch.setattr(PartLog, "read", no_reads)
    monkeypatch.setattr(RunStore, "failures", no_reads)
    for i in range(20):
        store.append_record({"point_key": f"p{i}", "energy_j": float(i)})
    store.record_failure("bad", ValueError("x"))
    store.clear_failure("bad")
    assert store.meta["points_done"] == 21 and store.meta["points_failed"] == 0


def test_close_merges_parts_into_results_parquet_and_csv(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.append_record({"point_key": "a", "knob": 1, "energy_j": 1})
    store.append_record({"point_key": "b", "knob": "auto", "energy_j": 2.5, "extra": "x"})
    store.append_samples([{"t_s": 0.0, "gpu0_power_w": 10.0}])
    store.append_samples([{"t_s": 0.1, "gpu0_power_w": 11.0, "gpu0_temp_c": 40.0}])
    store.finish("completed")
    assert "results.parts" not in _names(store.path) and "samples.parts" not in _names(store.path)
    df = pd.read_parquet(store.path / "results.parquet")
    assert list(df.columns) == ["point_key", "knob", "energy_j", "extra"]
    assert list(df["knob"]) == ["1", "auto"]  # int in one part, text in the other: JSON text, as one file always had
    assert list(df["energy_j"]) == [1.0, 2.5]
    assert (store.path / "results.csv").read_text() == "point_key,knob,energy_j,extra\na,1,1.0,\nb,auto,2.5,x\n"
    s = pd.read_parquet(store.path / "samples.parquet")
    assert list(s["t_s"]) == [0.0, 0.1] and pd.isna(s["gpu0_temp_c"][0]) and s["gpu0_temp_c"][1] == 40.0
    assert json.loads((store.path / "run.json").read_text())["status"] == "completed"
    store.close()  # again: nothing to merge, nothing changes
    assert pd.read_parquet(store.path / "results.parquet").equals(df)


def test_crash_between_merge_and_part_removal_counts_nothing_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _store(tmp_path)
    for k in "abc":
        store.append_record({"point_key": k, "energy_j": 1.0})
    monkeypatch.setattr(PartLog, "_drop", lambda self, seqs: None)  # killed right after the merged file landed
    store.close()
    monkeypatch.undo()
    assert len(_names(store.path / "results.parts")) == 3 and (store.path / "results.parquet").is_file()
    reopened = RunStore.open(store.path)
    assert [r["point_key"] for r in reopened.records()] == ["a", "b", "c"]
    reopened.append_record({"point_key": "d", "energy_j": 2.0})  # numbered after the merged parts
    assert "part-00000004.parquet" in _names(store.path / "results.parts")
    assert [r["point_key"] for r in RunStore.open(store.path).records()] == ["a", "b", "c", "d"]
    reopened.close()
    assert not (store.path / "results.parts").exists()
    assert list(pd.read_parquet(store.path / "results.parquet")["point_key"]) == ["a", "b", "c", "d"]


def test_resume_after_close_appends_and_merges_again(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.append_record({"point_key": "a", "energy_j": 1.0})
    store.finish("interrupted")
    again = RunStore.open(store.path)
    assert again.completed_keys() == {"a"}
    again.append_record({"point_key": "b", "energy_j": 2.0})
    assert _names(store.path / "results.parts") == ["part-00000002.parquet"]
    again.finish("completed")
    assert list(pd.read_parquet(store.path / "results.parquet")["point_key"]) == ["a", "b"]
    assert (store.path / "results.csv").read_text().splitlines()[1:] == ["a,1.0", "b,2.0"]


def test_torn_temp_part_is_ignored_and_damaged_part_is_named(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.append_record({"point_key": "a", "energy_j": 1.0})
    (store.path / "results.parts" / ".part-00000002.parquet.x1y2.tmp").write_bytes(b"half a parq")
    assert RunStore.open(store.path).completed_keys() == {"a"}
    bad = store.path / "results.parts" / "part-00000002.parquet"
    bad.write_bytes(b"garbage")
    with pytest.raises(RunStoreError, match=(
        rf"^{re.escape(str(bad))}: unreadable \(ArrowInvalid: .*Parquet file size is 7 bytes.*\); "
        r"the run folder is damaged \(delete that part to keep the other points; `--resume` reruns the points it held\)$"
    )):
        RunStore.open(store.path).records()


def test_samples_append_only_the_new_rows_during_a_study(charbench_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = RunStore.append_samples

    def spy(self: RunStore, rows: list[dict[str, Any]]) -> None:
        calls.append(len(rows))
        real(self, rows)

    monkeypatch.setattr(RunStore, "append_samples", spy)

    class Sleepy(Study):
        name = "sleepy"

        def points(self) -> list[dict[str, Any]]:
            return [{"i": i} for i in range(3)]

        def run_point(self, params: dict[str, Any], ctx: Context) -> dict[str, Any]:
            import time

            time.sleep(0.05)
            return {"x": params["i"]}

    res = run_study(Sleepy(), CommonOptions(out=charbench_home, device="cpu"), RunSettings(sample_interval_s=0.01))
    samples = pd.read_parquet(res.run_dir / "samples.parquet")
    assert sum(calls) == len(samples)  # each row stored once: nothing rewritten, nothing duplicated
    assert samples["t_s"].is_monotonic_increasing and not samples["t_s"].duplicated().any()
    assert len(calls) == 4 and all(n > 0 for n in calls[:3])  # one part per point, then the rest at close


def test_named_tables_write_append_read_and_list(tmp_path: Path) -> None:
    store = _store(tmp_path)
    path = store.write_table("requests/rate=4", pd.DataFrame({"ttft_ms": [1.0, 2.0], "itl_ms": [[1.0], [2.0, 3.0]]}))
    assert path == store.path / "tables" / "requests" / "rate=4.parquet"
    store.append_table("steps", pd.DataFrame({"step": [0, 1], "loss": [2.0, 1.5]}))
    store.append_table("steps", pa.table({"step": [2], "loss": [1.2], "lr": [0.1]}))
    assert _names(store.path / "tables" / "steps.parts") == ["part-00000001.parquet", "part-00000002.parquet"]
    listed = {
        "requests/rate=4": {"rows": 2, "columns": ["ttft_ms", "itl_ms"], "file": "tables/requests/rate=4.parquet"},
        "steps": {"rows": 3, "columns": ["step", "loss", "lr"], "file": "tables/steps.parquet"},
    }
    assert store.tables() == listed and json.loads((store.path / "run.json").read_text())["tables"] == listed
    steps = RunStore.open(store.path).read_table("steps")
    assert list(steps["loss"]) == [2.0, 1.5, 1.2] and pd.isna(steps["lr"][0]) and steps["lr"][2] == 0.1
    store.finish("completed")
    assert not (store.path / "tables" / "steps.parts").exists()
    assert list(pd.read_parquet(store.path / "tables" / "steps.parquet")["step"]) == [0, 1, 2]
    req = RunStore.open(store.path).read_table("requests/rate=4")
    assert [list(x) for x in req["itl_ms"]] == [[1.0], [2.0, 3.0]]
    # write_table replaces, appended parts included
    store.append_table("steps", pd.DataFrame({"step": [3], "loss": [1.0]}))
    store.write_table("steps", pd.DataFrame({"step": [9], "loss": [0.5]}))
    assert not (store.path / "tables" / "steps.parts").exists()
    assert list(RunStore.open(store.path).read_table("steps")["step"]) == [9]
    assert store.tables()["steps"] == {"rows": 1, "columns": ["step", "loss"], "file": "tables/steps.parquet"}


@pytest.mark.parametrize("bad", ["", "a b", "../x", ".hidden", "x/", "a/.b", "x.parts", "per/step.parts/y", "é"])
def test_table_names_are_validated(tmp_path: Path, bad: str) -> None:
    store = _store(tmp_path)
    with pytest.raises(ValueError) as ei:
        store.write_table(bad, pd.DataFrame({"x": [1]}))
    assert str(ei.value) == (
        f"table name {bad!r}: use letters, digits and _ . = , + - in '/'-separated segments "
        "that neither start with '.' nor end in '.parts' (e.g. 'requests/rate=4')"
    )
    assert not (store.path / "tables").exists()


def test_read_table_errors(tmp_path: Path) -> None:
    store = _store(tmp_path)
    with pytest.raises(RunStoreError) as ei:
        store.read_table("steps")
    assert str(ei.value) == f"{store.path}: no table 'steps' in this run (tables: none); `charbench report {store.path}` lists them"
    store.write_table("steps", pd.DataFrame({"x": [1]}))
    (store.path / "tables" / "steps.parquet").unlink()
    with pytest.raises(RunStoreError) as ei:
        RunStore.open(store.path).read_table("steps")
    assert str(ei.value) == f"{store.path / 'tables' / 'steps.parquet'}: unreadable (listed in run.json but missing); the run folder is damaged"


def test_a_study_writes_tables_through_its_context_and_the_report_lists_them(charbench_home: Path) -> None:
    class Stepper(Study):
        name = "stepper"

        def points(self) -> list[dict[str, Any]]:
            return [{"i": 0}, {"i": 1}]

        def run_point(self, params: dict[str, Any], ctx: Context) -> dict[str, Any]:
            ctx.store.append_table("steps", pd.DataFrame({"point": [params["i"]] * 3, "step": [0, 1, 2]}))
            return {"x": params["i"]}

    res = run_study(Stepper(), CommonOptions(out=charbench_home, device="cpu"), RunSettings(sample_interval_s=0))
    store = RunStore.open(res.run_dir)
    assert store.tables() == {"steps": {"rows": 6, "columns": ["point", "step"], "file": "tables/steps.parquet"}}
    assert list(store.read_table("steps")["point"]) == [0, 0, 0, 1, 1, 1]
    assert not (res.run_dir / "tables" / "steps.parts").exists()  # compacted when the run closed
    # the report lists the table (its content as data, not markup)
    from report_content import capture_sections

    from charbench import report

    assert res.report is not None and res.report.is_file()
    (listing,) = capture_sections(lambda d: [report.tables_section(d)], report, report.RunData.load(res.run_dir)).tables
    assert listing.to_dict("records") == [{"table": "steps", "rows": 6, "columns": "point, step", "file": "tables/steps.parquet"}]


def test_part_log_frames_from_arrow_and_pandas_mix(tmp_path: Path) -> None:
    writes: list[Path] = []

    def write(path: Path, data: Any) -> None:
        writes.append(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(bytes(data))

    log = PartLog(tmp_path / "t.parquet", write_bytes=write, damaged=lambda p, e, h: RuntimeError(f"{p.name}: {h}"), hint="h", part_hint="ph")
    assert log.read() is None and not log.exists() and log.compact() is None
    log.append(pa.table({"a": [1]}))
    log.append(pd.DataFrame({"a": [True]}))  # int then bool: no common Arrow type, pandas keeps both
    assert list(log.read()["a"]) == [1, True]
    assert list(log.compact(_encode_mixed)["a"]) == ["1", "true"] and writes[-1] == tmp_path / "t.parquet"
    assert parts.parts_dir(tmp_path / "t.parquet") == tmp_path / "t.parts" and not (tmp_path / "t.parts").exists()
    (tmp_path / "t.parquet").write_bytes(b"xxxxxxxxxxxx")
    with pytest.raises(RuntimeError, match=r"^t.parquet: h$"):
        log.read()


def test_one_append_of_mixed_rows_stores_what_one_write_stored(tmp_path: Path) -> None:
    import numpy as np

    store = _store(tmp_path)
    store.append_records([
        {"point_key": "a", "flag": 1, "x": 1, "v": np.float64(0.5)},
        {"point_key": "a", "flag": True, "x": 2.5, "v": np.float64(1.5)},
    ])
    store.append_records([{"point_key": "b", "flag": None, "x": 3, "v": None}])
    assert [r["flag"] for r in store.records()] == ["1", "true", None]  # that part took the DataFrame path
    store.close()
    df = pd.read_parquet(store.path / "results.parquet")
    assert list(df["flag"])[:2] == ["1", "true"] and df["flag"].isna().tolist() == [False, False, True]  # mixed kinds: JSON text
    assert df["x"].tolist() == [1.0, 2.5, 3.0] and df["v"].tolist()[:2] == [0.5, 1.5]


def test_a_reader_racing_a_compaction_reads_every_row_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writer = _store(tmp_path)
    for k in "abc":
        writer.append_record({"point_key": k, "energy_j": 1.0})
    real_seqs = PartLog._seqs
    raced: list[bool] = []

    def seqs_then_compaction(self: PartLog) -> list[int]:
        listed = real_seqs(self)
        if not raced and listed:
            raced.append(True)
            writer.close()  # the run closes between the reader's listing and its reads
        return listed

    monkeypatch.setattr(PartLog, "_seqs", seqs_then_compaction)
    assert [r["point_key"] for r in RunStore.open(writer.path).records()] == ["a", "b", "c"]
    assert raced and not (writer.path / "results.parts").exists()
