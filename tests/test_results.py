"""Run records: folder layout, atomic writes, records/failures/samples, null-not-zero."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import pandas as pd
import pytest

from charbench import results
from charbench.errors import RunStoreError
from charbench.results import RunStore, atomic_write_json, atomic_write_text, list_runs

NOW = dt.datetime(2026, 3, 1, 12, 30, 5)


def _store(out: Path, label: str = "a100 <x>", **kw: object) -> RunStore:
    return RunStore.create(out, "gemm-power", label=label, config={"n": 1}, env={"python": "3.11"}, meta={"k": "v"}, now=NOW, **kw)  # type: ignore[arg-type]


def test_create_layout_and_metadata(tmp_path: Path) -> None:
    store = _store(tmp_path)
    assert store.path == tmp_path / "gemm-power" / "20260301-123005-a100-x"
    assert sorted(p.name for p in store.path.iterdir()) == ["config.json", "env.json", "run.json"]
    meta = json.loads((store.path / "run.json").read_text())
    assert meta["study"] == "gemm-power" and meta["label"] == "a100 <x>" and meta["status"] == "running"
    assert meta["meta"] == {"k": "v"} and meta["run_id"] == "20260301-123005-a100-x"
    assert store.config() == {"n": 1} and store.env() == {"python": "3.11"}
    # same second, same label: a second folder, never a shared one
    again = _store(tmp_path)
    assert again.path.name == "20260301-123005-a100-x-2"
    assert _store(tmp_path, label="").path.name == "20260301-123005"


def test_records_roundtrip_parquet_and_csv(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.append_record({"point_key": "n=1", "n": 1, "energy_j": 2.5, "time_s": 0.1, "dtype": "fp16"})
    store.append_records([{"point_key": "n=2", "n": 2, "energy_j": 3.0, "time_s": 0.2, "dtype": "bf16"}, {"point_key": "n=2", "n": 2, "energy_j": 3.5, "time_s": 0.2, "dtype": "bf16"}])
    assert store.meta["points_done"] == 2  # two distinct points, three rows
    store.close()  # the parts become results.parquet and results.csv
    df = pd.read_parquet(store.path / "results.parquet")
    assert list(df["energy_j"]) == [2.5, 3.0, 3.5]
    csv = pd.read_csv(store.path / "results.csv")
    assert list(csv.columns) == ["point_key", "n", "energy_j", "time_s", "dtype"]
    assert list(csv["dtype"]) == ["fp16", "bf16", "bf16"]
    reopened = RunStore.open(store.path, study="gemm-power")
    assert reopened.completed_keys() == {"n=1", "n=2"}
    assert reopened.records()[0] == {"point_key": "n=1", "n": 1, "energy_j": 2.5, "time_s": 0.1, "dtype": "fp16"}
    with pytest.raises(ValueError, match="point_key"):
        store.append_record({"energy_j": 1.0})


def test_unmeasured_energy_is_null_not_zero(tmp_path: Path) -> None:
    store = _store(tmp_path)
    reasons = json.dumps({"energy_j": "RAPL unreadable: permission denied"})
    store.append_record({"point_key": "a", "energy_j": None, "mean_power_w": None, "time_s": 1.0, "null_reasons": reasons})
    store.append_record({"point_key": "b", "energy_j": None, "mean_power_w": None, "time_s": 2.0, "null_reasons": reasons})
    store.close()
    df = pd.read_parquet(store.path / "results.parquet")
    assert df["energy_j"].isna().all() and df["mean_power_w"].isna().all()
    assert (df["energy_j"].fillna(-1) != 0).all()
    lines = (store.path / "results.csv").read_text().splitlines()
    assert lines[0].split(",")[:4] == ["point_key", "energy_j", "mean_power_w", "time_s"]
    assert lines[1].startswith("a,,,1.0,")  # empty cells, never 0
    assert json.loads(df["null_reasons"][0])["energy_j"].startswith("RAPL unreadable")
    assert RunStore.open(store.path).records()[0]["energy_j"] is None


def test_mixed_and_nested_values_stay_flat(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.append_record({"point_key": "a", "shape": [1, 2], "extra": {"x": 1}, "knob": 1})
    store.append_record({"point_key": "b", "shape": [3, 4], "extra": None, "knob": "auto"})
    store.close()  # the two points were two parts: the merge applies the JSON encoding across both
    df = pd.read_parquet(store.path / "results.parquet")
    assert list(df["shape"]) == ["[1, 2]", "[3, 4]"]
    assert df["extra"][0] == '{"x": 1}' and pd.isna(df["extra"][1])
    assert list(df["knob"]) == ["1", "auto"]


def test_failures_written_listed_and_cleared(tmp_path: Path) -> None:
    store = _store(tmp_path)
    try:
        raise RuntimeError("NaN in output")
    except RuntimeError as exc:
        p = store.record_failure("dtype=fp8", exc, {"dtype": "fp8"})
    assert p == store.path / "failures" / "dtype=fp8.json"
    f = json.loads(p.read_text())
    assert f["error_type"] == "RuntimeError" and f["message"] == "NaN in output" and f["params"] == {"dtype": "fp8"}
    assert "Traceback" in f["traceback"] and "NaN in output" in f["traceback"]
    assert store.meta["points_failed"] == 1 and len(store.failures()) == 1
    (store.path / "failures" / "junk.json").write_text("{not json")
    assert [x["point_key"] for x in store.failures()] == ["dtype=fp8"]
    store.clear_failure("dtype=fp8")
    assert not p.exists() and store.meta["points_failed"] == 0
    assert json.loads((store.path / "run.json").read_text())["points_failed"] == 0


def test_long_point_key_failure_file_name(tmp_path: Path) -> None:
    store = _store(tmp_path)
    key = ",".join(f"knob{i}=value{i}" for i in range(40))
    p = store.record_failure(key, ValueError("x"))
    assert p.exists() and len(p.name) < 200
    assert json.loads(p.read_text())["point_key"] == key
    store.clear_failure(key)
    assert not p.exists()


def test_samples(tmp_path: Path) -> None:
    store = _store(tmp_path)
    assert store.samples_frame() is None
    store.append_samples([])
    assert not (store.path / "samples.parquet").exists() and not (store.path / "samples.parts").exists()
    store.append_samples([{"t_s": 0.0, "gpu0_power_w": 100.0}, {"t_s": 0.1, "gpu0_power_w": None}])
    s = store.samples_frame()
    assert list(s["t_s"]) == [0.0, 0.1] and pd.isna(s["gpu0_power_w"][1])


def test_finish_and_list_runs(tmp_path: Path) -> None:
    a = _store(tmp_path, label="a")
    b = RunStore.create(tmp_path, "serving", label="b", config={}, env={}, now=NOW + dt.timedelta(seconds=1))
    a.update_meta(points_total=3)
    a.finish("interrupted")
    meta = json.loads((a.path / "run.json").read_text())
    assert meta["status"] == "interrupted" and meta["finished"] and meta["points_total"] == 3
    (tmp_path / "serving" / "broken").mkdir()
    (tmp_path / "serving" / "broken" / "run.json").write_text("{oops")
    assert [r.path.name for r in list_runs(tmp_path)] == [a.path.name, b.path.name]
    assert list_runs(tmp_path / "missing") == []


def test_open_errors(tmp_path: Path) -> None:
    with pytest.raises(RunStoreError) as ei:
        RunStore.open(tmp_path)
    assert str(ei.value) == f"{tmp_path} is not a charbench run folder (no run.json); pass a folder made by a charbench study"
    store = _store(tmp_path)
    with pytest.raises(RunStoreError) as ei:
        RunStore.open(store.path, study="serving")
    assert str(ei.value) == f"--resume {store.path}: that run is from 'gemm-power', not 'serving'; continue it with `charbench gemm-power --resume {store.path}`"
    (store.path / "run.json").write_text("[1, 2")
    with pytest.raises(RunStoreError) as ei:
        RunStore.open(store.path)
    assert str(ei.value) == f"{store.path / 'run.json'}: unreadable (JSONDecodeError: Expecting ',' delimiter: line 1 column 6 (char 5)); the run folder is damaged"


def test_read_run_json_names_the_file_and_the_reason(tmp_path: Path) -> None:
    f = tmp_path / "env.json"
    f.write_text('{"a": 1}')
    assert results.read_run_json(f) == {"a": 1}
    f.write_bytes(b"\xff\xfe{")
    with pytest.raises(RunStoreError) as ei:
        results.read_run_json(f)
    assert str(ei.value) == f"{f}: unreadable (UnicodeDecodeError: 'utf-8' codec can't decode byte 0xff in position 0: invalid start byte); the run folder is damaged"
    f.write_text("[1, 2]")
    with pytest.raises(RunStoreError) as ei:
        results.read_run_json(f)
    assert str(ei.value) == f"{f}: unreadable (a JSON list, not an object); the run folder is damaged"
    with pytest.raises(RunStoreError, match=r"missing.json: unreadable \(FileNotFoundError: .*\); the run folder is damaged$"):
        results.read_run_json(tmp_path / "missing.json")


def test_damaged_config_and_env_are_run_store_errors(tmp_path: Path) -> None:
    store = _store(tmp_path)
    (store.path / "config.json").write_text("{")
    (store.path / "env.json").write_text("")
    with pytest.raises(RunStoreError) as ei:
        store.config()
    assert str(ei.value) == f"{store.path / 'config.json'}: unreadable (JSONDecodeError: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)); the run folder is damaged"
    with pytest.raises(RunStoreError) as ei:
        store.env()
    assert str(ei.value) == f"{store.path / 'env.json'}: unreadable (JSONDecodeError: Expecting value: line 1 column 1 (char 0)); the run folder is damaged"
    (store.path / "config.json").unlink()
    assert store.config() == {}  # a report of an old folder without config.json still renders


def test_resume_config_refuses_a_missing_or_incomplete_config(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path, "gemm-power", config={"study_config": {"n": 1}, "common": {"seed": 2}}, env={})
    assert store.resume_config() == {"study_config": {"n": 1}, "common": {"seed": 2}}
    (store.path / "config.json").write_text('{"study_config": [1]}')
    with pytest.raises(RunStoreError) as ei:
        store.resume_config()
    assert str(ei.value) == f"--resume {store.path}: config.json has no study_config; this is not a resumable run folder (start a new run without --resume)"
    (store.path / "config.json").unlink()
    with pytest.raises(RunStoreError) as ei:
        store.resume_config()
    assert str(ei.value) == f"--resume {store.path}: config.json is missing; this is not a resumable run folder (start a new run without --resume)"


def test_run_json_records_pid_and_host(tmp_path: Path) -> None:
    import socket

    meta = json.loads((_store(tmp_path).path / "run.json").read_text())
    assert meta["pid"] == os.getpid() and meta["host"] == socket.gethostname()


def test_atomic_write_crash_keeps_old_file_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "results.csv"
    atomic_write_text(target, "old\n")

    def boom(src: object, dst: object) -> None:
        raise OSError("disk vanished")

    monkeypatch.setattr(results.os, "replace", boom)
    with pytest.raises(OSError, match="disk vanished"):
        atomic_write_text(target, "new\n")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv"]


def test_crash_mid_results_write_keeps_previous_points(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _store(tmp_path)
    store.append_record({"point_key": "a", "energy_j": 1.0})
    parts = store.path / "results.parts"
    before = (parts / "part-00000001.parquet").read_bytes()
    real_replace = os.replace

    def crash_on_results(src: str, dst: str) -> None:
        if str(dst).endswith(".parquet"):
            raise KeyboardInterrupt  # Ctrl-C exactly during the rename
        real_replace(src, dst)

    monkeypatch.setattr(results.os, "replace", crash_on_results)
    with pytest.raises(KeyboardInterrupt):
        store.append_record({"point_key": "b", "energy_j": 2.0})
    monkeypatch.setattr(results.os, "replace", real_replace)
    assert sorted(p.name for p in parts.iterdir()) == ["part-00000001.parquet"]  # no torn part, no temp file
    assert (parts / "part-00000001.parquet").read_bytes() == before
    assert store.completed_keys() == {"a"} and store.meta["points_done"] == 1  # memory matches disk
    assert RunStore.open(store.path).completed_keys() == {"a"}
    store.append_record({"point_key": "b", "energy_j": 2.0})  # the failed write's number is reused
    assert sorted(p.name for p in parts.iterdir()) == ["part-00000001.parquet", "part-00000002.parquet"]


def test_atomic_json_nan_becomes_null(tmp_path: Path) -> None:
    p = tmp_path / "x.json"
    atomic_write_json(p, {"a": float("nan"), "b": [float("inf"), 1.0], "c": Path("/p"), "d": (1, 2)})
    assert json.loads(p.read_text()) == {"a": None, "b": [None, 1.0], "c": "/p", "d": [1, 2]}


def test_atomic_write_gives_umask_permissions(tmp_path: Path) -> None:
    import os

    from charbench.results import atomic_write_text

    old = os.umask(0o022)
    results._UMASK = None
    try:
        target = tmp_path / "report.html"
        atomic_write_text(target, "x")
        assert target.stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)
        results._UMASK = None


def test_unwritable_out_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(RunStoreError, match=r"^--out .*a-file: cannot create the run folder .*pick a writable folder with --out"):
        RunStore.create(blocker, "gemm-power", config={}, env={})
    from charbench.cli import main

    rc = main(["gemm-power", "--out", str(blocker), "--device", "cpu", "--experiments", "sigma", "--dtypes", "fp32", "--size", "8"])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith(f"Error: --out {blocker}: cannot create the run folder") and "internal error" not in err


def test_damaged_parquet_is_a_run_store_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = RunStore.create(tmp_path, "gemm-power", config={}, env={})
    store.append_record({"point_key": "a", "energy_j": 1.0})
    store.append_samples([{"t_s": 0.0, "gpu0_power_w": 1.0}])
    (store.path / "results.parquet").write_bytes(b"garbage")
    (store.path / "samples.parquet").write_bytes(b"garbage")
    fresh = RunStore.open(store.path)
    with pytest.raises(RunStoreError, match=r"results.parquet: unreadable .*the run folder is damaged \(its results.csv may still hold"):
        fresh.records()
    with pytest.raises(RunStoreError, match=r"samples.parquet: unreadable"):
        fresh.samples_frame()
    from charbench.cli import main

    assert main(["report", str(store.path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"Error: {store.path / 'results.parquet'}: unreadable") and "internal error" not in err
