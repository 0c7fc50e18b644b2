"""Run records: one self-describing folder per run, written atomically.

::

    store = RunStore.create(out, "gemm-power", label="a100", config=cfg_dict, env=env_dict)
    store.append_record({"point_key": "...", "energy_j": 12.3, ...})
    store.record_failure("dtype=fp8", exc, params)
    store.finish("completed")

Layout of ``<out>/<study>/<YYYYmmdd-HHMMSS>-<label>/``: ``config.json`` (resolved),
``env.json``, ``run.json`` (study, status, counts, times, pid and host, ``format_version``,
the ``tables`` listing), ``results.parquet`` and ``results.csv`` (one flat row per point),
``samples.parquet`` (sampler timeline), ``tables/<name>.parquet`` (named tables: per-request,
per-step, per-event data), ``failures/<point>.json``, ``report.html``. Every write is
temp-file + rename, so a crash never leaves a half-written file and every completed point
stays on disk.

Storage is append-only: a point's records, a slice of samples or of a table go to a new
part (``results.parts/part-00000001.parquet``, see :mod:`charbench.parts`), so appending
costs O(its own rows); :meth:`RunStore.finish` merges the parts into the files above and
writes results.csv once. Readers see compacted files plus parts alike. Old folders are
brought to the current run.json format by :mod:`charbench.migrations` when opened.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
import tempfile
import traceback
from pathlib import Path
from typing import Any

from charbench.errors import RunStoreError
from charbench.migrations import FORMAT_VERSION, migrate, rename_columns, reshape_config
from charbench.parts import PARTS_SUFFIX, PartLog, frame_table, table_entry
from charbench.runlock import owner_fields

RUN_META = "run.json"
CONFIG_JSON = "config.json"
ENV_JSON = "env.json"
RESULTS_PARQUET = "results.parquet"
RESULTS_CSV = "results.csv"
SAMPLES_PARQUET = "samples.parquet"
FAILURES_DIR = "failures"
TABLES_DIR = "tables"
_TABLE_SEGMENT = re.compile(r"[A-Za-z0-9_=,+-][A-Za-z0-9_.=,+-]*")
CHECKPOINT = "checkpoint.pkl"


def _umask() -> int:
    # os.umask can only be read by setting it; do that once, not while other threads write files.
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0)
        os.umask(_UMASK)
    return _UMASK


_UMASK: int | None = None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes 0600 files; give the usual permissions so reports can be published.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Atomic text write (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)


def _clean(obj: Any) -> Any:
    """Replace NaN/inf by None so JSON stays standard (null = not measured)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def atomic_write_json(path: Path, obj: Any) -> None:
    """Atomic, pretty JSON write; NaN becomes null."""
    atomic_write_text(path, json.dumps(_clean(obj), indent=2, default=_json_default, allow_nan=False) + "\n")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:60]


def _now_iso() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def _frame(rows: list[dict[str, Any]]):  # -> pandas.DataFrame
    import pandas as pd

    return _encode_mixed(pd.DataFrame(rows))


_PLAIN = frozenset({str, int, float, bool})


def _part_rows(rows: list[dict[str, Any]]) -> Any:
    """Rows for one part: an Arrow table built directly when every column holds one plain type, else :func:`_frame`.

    Direct is ~20x cheaper than a DataFrame for the few rows of one append; anything else
    (mixed kinds, nested values, numpy objects) takes the DataFrame path, so the stored
    values are those one write of all rows would store.
    """
    import pyarrow as pa

    cols = {k: [r.get(k) for r in rows] for k in dict.fromkeys(k for r in rows for k in r)}
    for values in cols.values():
        kinds = {type(v) for v in values if v is not None}
        if not kinds <= _PLAIN or (len(kinds) > 1 and kinds != {int, float}):
            return _frame(rows)
    try:
        return pa.table(cols)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):  # e.g. an int beyond 64 bits
        return _frame(rows)


def _encode_mixed(df: Any) -> Any:
    """``df`` with mixed-type and nested object columns as JSON text (in place; returns it)."""
    # Mixed-type object columns (e.g. a knob that is sometimes a list) break parquet: store as JSON text.
    for col in df.columns:
        if df[col].dtype == object:
            kinds = {type(v) for v in df[col] if v is not None and not (isinstance(v, float) and math.isnan(v))}
            if len(kinds) > 1 or kinds & {list, dict, tuple}:
                df[col] = [None if v is None else json.dumps(v, default=_json_default) if not isinstance(v, str) else v for v in df[col]]
    return df


class RunStore:
    """A run folder on disk; the only writer of its files."""

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path = Path(path)
        self.meta = meta
        self._records: list[dict[str, Any]] | None = None
        # Kept up to date by each append, so an append never rereads the folder (that is O(points)).
        self._done_keys: set[str] | None = None
        self._failed: int | None = None
        self._results = self._part_log(RESULTS_PARQUET, "its results.csv may still hold the completed points",
                                       "delete that part to keep the other points; `--resume` reruns the points it held")
        self._samples = self._part_log(SAMPLES_PARQUET, "delete samples.parquet to render the rest", "delete that part to render the rest")
        self._tables: dict[str, PartLog] = {}

    def _part_log(self, rel: str, hint: str, part_hint: str) -> PartLog:
        return PartLog(self.path / rel, write_bytes=atomic_write_bytes, damaged=damaged_file, hint=hint, part_hint=part_hint)

    # -- creation / opening -------------------------------------------------
    @classmethod
    def create(
        cls,
        out: Path,
        study: str,
        *,
        label: str = "",
        config: dict[str, Any],
        env: dict[str, Any],
        meta: dict[str, str] | None = None,
        report_hook: str | None = None,
        now: _dt.datetime | None = None,
    ) -> RunStore:
        """Make a new run folder ``<out>/<study>/<stamp>-<label>`` and write its metadata."""
        stamp = (now or _dt.datetime.now()).strftime("%Y%m%d-%H%M%S")
        name = f"{stamp}-{_slug(label)}" if _slug(label) else stamp
        base = Path(out) / study
        path = base / name
        try:
            base.mkdir(parents=True, exist_ok=True)
            n = 1
            while True:  # two runs started in the same second get -2, -3, ... (mkdir is the lock)
                try:
                    path.mkdir()
                    break
                except FileExistsError:
                    n += 1
                    path = base / f"{name}-{n}"
        except OSError as exc:
            raise RunStoreError(
                f"--out {out}: cannot create the run folder {path} ({exc.strerror or exc}); "
                "pick a writable folder with --out (or $CHARBENCH_HOME)"
            ) from None
        run_meta = {
            "study": study,
            "label": label,
            "run_id": path.name,
            "meta": meta or {},
            "status": "running",
            "started": _now_iso(),
            "finished": None,
            "points_total": None,
            "points_done": 0,
            "points_failed": 0,
            "report_hook": report_hook,
            "device": None,  # set when the sweep starts; present from the start so readers need no default
            "format_version": FORMAT_VERSION,
            "tables": {},
            **owner_fields(),  # `charbench runs` shows a running run whose process is gone as stale
        }
        store = cls(path, run_meta)
        store._done_keys, store._failed = set(), 0
        atomic_write_json(path / CONFIG_JSON, config)
        atomic_write_json(path / ENV_JSON, env)
        store._write_meta()
        return store

    @classmethod
    def open(cls, path: Path, study: str | None = None) -> RunStore:
        """Open an existing run folder.

        Raises:
            RunStoreError: not a run folder, or one of another study.
        """
        path = Path(path)
        meta_file = path / RUN_META
        if not meta_file.is_file():
            raise RunStoreError(f"{path} is not a charbench run folder (no {RUN_META}); pass a folder made by a charbench study")
        meta = read_run_json(meta_file)
        if "study" not in meta:
            raise RunStoreError(f"{path}: {RUN_META} has no 'study'; the run folder is damaged")
        if study is not None and meta.get("study") != study:
            raise RunStoreError(f"--resume {path}: that run is from '{meta.get('study')}', not '{study}'; continue it with `charbench {meta.get('study')} --resume {path}`")
        meta, migrated = migrate(meta, path)
        store = cls(path, meta)
        if migrated:
            try:
                store._write_meta()
            except OSError:
                pass  # a read-only folder (an archive, another user's run) is migrated in memory only
        return store

    # -- metadata -----------------------------------------------------------
    @property
    def study(self) -> str:
        """The study that made the run."""
        return str(self.meta["study"])

    def config(self) -> dict[str, Any]:
        """The resolved config of the run ({} when config.json is missing).

        Raises:
            RunStoreError: config.json is unreadable.
        """
        p = self.path / CONFIG_JSON
        return self._reshaped(read_run_json(p)) if p.exists() else {}

    def _reshaped(self, config: dict[str, Any]) -> dict[str, Any]:
        """config.json as this charbench writes it (an old folder's is reshaped on read, migration 3)."""
        return reshape_config(config, list(self.meta.get("config_reshapes") or []))

    def env(self) -> dict[str, Any]:
        """The environment inventory recorded at the start ({} when env.json is missing).

        Raises:
            RunStoreError: env.json is unreadable.
        """
        p = self.path / ENV_JSON
        return read_run_json(p) if p.exists() else {}

    def resume_config(self) -> dict[str, Any]:
        """The saved config.json of a run that ``--resume`` continues.

        Unlike :meth:`config`, a missing file or one without ``study_config`` is an error:
        without it a resume cannot tell whether it continues the same sweep.

        Raises:
            RunStoreError: config.json is missing, unreadable or has no ``study_config``.
        """
        p = self.path / CONFIG_JSON
        if not p.exists():
            raise RunStoreError(f"--resume {self.path}: {CONFIG_JSON} is missing; this is not a resumable run folder (start a new run without --resume)")
        saved = self._reshaped(read_run_json(p))
        if not isinstance(saved.get("study_config"), dict):
            raise RunStoreError(f"--resume {self.path}: {CONFIG_JSON} has no study_config; this is not a resumable run folder (start a new run without --resume)")
        return saved

    def _write_meta(self) -> None:
        atomic_write_json(self.path / RUN_META, self.meta)

    def update_meta(self, **fields: Any) -> None:
        """Set fields of run.json (e.g. ``points_total``) and write it."""
        self.meta.update(fields)
        self._write_meta()

    def finish(self, status: str) -> None:
        """Compact the stored parts (:meth:`close`) and mark the run ``completed``, ``interrupted`` or ``failed``."""
        try:
            self.close()
        finally:
            self.update_meta(status=status, finished=_now_iso())

    def close(self) -> None:
        """Merge every table's parts into its one file and write results.csv (once, here).

        Safe to call again, and after a crash between the merged file and the removal of
        the parts: the merged file records the last part it holds, so nothing is read twice.
        """
        merged = self._results.compact(_encode_mixed)  # mixed types across parts get today's JSON encoding
        if merged is not None:
            atomic_write_text(self.path / RESULTS_CSV, merged.to_csv(index=False))
        self._samples.compact(_encode_mixed)
        for name in self.tables():
            self._table_log(name).compact(_encode_mixed)

    def write_checkpoint(self, state: Any, point_key: str) -> None:
        """Save an ordered study's state after ``point_key`` (pickled, atomic; replaces the last one)."""
        import pickle

        atomic_write_bytes(self.path / CHECKPOINT, pickle.dumps({"point_key": point_key, "state": state}, protocol=4))

    def read_checkpoint(self) -> Any:
        """The state saved by :meth:`write_checkpoint` (None when there is none).

        Raises:
            RunStoreError: the checkpoint is unreadable.
        """
        saved = self._load_checkpoint()
        return None if saved is None else saved["state"]

    def checkpoint_key(self) -> str | None:
        """The point after which the checkpoint was taken (None without a checkpoint)."""
        saved = self._load_checkpoint()
        return None if saved is None else str(saved["point_key"])

    def _load_checkpoint(self) -> dict[str, Any] | None:
        import pickle

        p = self.path / CHECKPOINT
        if not p.is_file():
            return None
        try:
            saved = pickle.loads(p.read_bytes())
            if not isinstance(saved, dict) or "point_key" not in saved or "state" not in saved:
                raise ValueError("not a charbench checkpoint")
            return saved
        except Exception as exc:
            raise RunStoreError(f"{p}: unreadable ({type(exc).__name__}: {exc}); the run folder is damaged (start a new run)") from exc

    def write_json(self, name: str, obj: Any) -> Path:
        """Atomically write an extra JSON artifact (e.g. a calibration) into the run folder."""
        p = self.path / name
        atomic_write_json(p, obj)
        return p

    # -- records ------------------------------------------------------------
    def records(self) -> list[dict[str, Any]]:
        """All completed point records, in completion order (compacted results plus parts).

        Raises:
            RunStoreError: results.parquet or a part is unreadable (named in the message).
        """
        if self._records is None:
            df = self._results.read()
            rows = [] if df is None else [{k: _from_pandas(v) for k, v in row.items()} for row in df.to_dict("records")]
            # an old folder's columns under today's names (migration 2): compare against an old baseline works
            self._records = rename_columns(rows, list(self.meta.get("column_renames") or []))
        return self._records

    def completed_keys(self) -> set[str]:
        """``point_key`` of every completed point (``--resume`` skips them)."""
        return set(self._done())

    def _done(self) -> set[str]:
        if self._done_keys is None:
            if self._records is not None:
                self._done_keys = {str(r["point_key"]) for r in self._records if r.get("point_key") is not None}
            else:  # only the key column: opening a long run for --resume need not load every record
                df = self._results.read(columns=["point_key"])
                keys = [] if df is None or "point_key" not in df else df["point_key"].dropna()
                self._done_keys = {str(k) for k in keys}
        return self._done_keys

    def append_record(self, record: dict[str, Any]) -> None:
        """Add one completed point (one new part file; see :meth:`append_records`)."""
        self.append_records([record])

    def append_records(self, records: list[dict[str, Any]]) -> None:
        """Add several records with one write (e.g. one point that yields many rows).

        The records go to one new part, ``results.parts/part-<seq>.parquet``: the cost is
        O(these records), whatever the run already holds.

        Raises:
            ValueError: a record has no ``point_key``.
        """
        if any("point_key" not in r for r in records):
            raise ValueError("a record needs a point_key")
        if not records:
            return
        new = [dict(r) for r in records]
        done, failed = self._done(), self._failures_count()
        self._results.append(_part_rows(new))
        # Only after the part is on disk does memory change (a failed write keeps it in step).
        if self._records is not None:
            self._records.extend(new)
        done.update(str(r["point_key"]) for r in new)
        self.update_meta(points_done=len(done), points_failed=failed)

    def results_frame(self):  # -> pandas.DataFrame
        """Completed points as a DataFrame (empty frame when none)."""
        return _frame(self.records())

    # -- samples ------------------------------------------------------------
    def append_samples(self, rows: list[dict[str, Any]]) -> None:
        """Add sampler rows not stored yet (one part holding only ``rows``; none when empty)."""
        if rows:
            self._samples.append(_part_rows(rows))

    def samples_frame(self):  # -> pandas.DataFrame | None
        """The sampler timeline, or None when nothing was sampled.

        Raises:
            RunStoreError: samples.parquet or a part is unreadable.
        """
        return self._samples.read()

    # -- named tables ---------------------------------------------------------
    def tables(self) -> dict[str, dict[str, Any]]:
        """Named tables of the run, from run.json: name -> ``{"rows", "columns", "file"}``."""
        return {k: dict(v) for k, v in (self.meta.get("tables") or {}).items()}

    def write_table(self, name: str, frame: Any) -> Path:
        """Write a whole named table (pandas DataFrame or Arrow table) as ``tables/<name>.parquet``.

        One columnar write (no per-row Python), so tables of millions of rows are fine.
        Replaces an earlier table of that name, appended parts included.

        Raises:
            ValueError: a bad table name (see :func:`check_table_name`).
        """
        log = self._table_log(name)
        table = frame_table(frame)
        log.replace(table)
        self._list_table(name, table.num_rows, table.column_names, replace=True)
        return log.compacted

    def append_table(self, name: str, frame: Any) -> Path:
        """Append rows to a named table (one new part; merged into ``tables/<name>.parquet`` at close).

        Raises:
            ValueError: a bad table name (see :func:`check_table_name`).
        """
        log = self._table_log(name)
        table = frame_table(frame)
        part = log.append(table)
        self._list_table(name, table.num_rows, table.column_names, replace=False)
        return part

    def read_table(self, name: str):  # -> pandas.DataFrame
        """One named table as a DataFrame (its merged file plus any parts).

        Raises:
            RunStoreError: no such table, its file is missing, or a file is unreadable.
        """
        if name not in self.tables():
            listed = ", ".join(sorted(self.tables())) or "none"
            raise RunStoreError(f"{self.path}: no table {name!r} in this run (tables: {listed}); `charbench report {self.path}` lists them")
        df = self._table_log(name).read()
        if df is None:
            raise damaged_file(self.path / self.tables()[name]["file"], "listed in run.json but missing")
        return df

    def _table_log(self, name: str) -> PartLog:
        log = self._tables.get(name)
        if log is None:
            check_table_name(name)
            listed = self.tables().get(name)  # migrated folders list files where old versions wrote them
            rel = str(listed["file"]) if listed else f"{TABLES_DIR}/{name}.parquet"
            log = self._tables[name] = self._part_log(rel, f"delete it to render the rest of the run (table {name!r} is then lost)",
                                                      f"delete that part to read the rest of table {name!r}")
        return log

    def _list_table(self, name: str, rows: int, columns: list[str], *, replace: bool) -> None:
        tables = self.meta.setdefault("tables", {})
        old = tables.get(name)
        if old is not None and not replace:
            rows += int(old.get("rows") or 0)
            columns = list(dict.fromkeys([*old.get("columns", []), *columns]))
        log = self._tables[name]
        tables[name] = table_entry(rows, columns, log.compacted.relative_to(self.path).as_posix())
        self._write_meta()

    # -- failures -----------------------------------------------------------
    def record_failure(self, point_key: str, exc: BaseException, params: dict[str, Any] | None = None) -> Path:
        """Write ``failures/<point>.json`` with the error type, message and traceback."""
        p = self.failure_path(point_key)
        failed = self._failures_count() + (0 if p.exists() else 1)
        atomic_write_json(
            p,
            {
                "point_key": point_key,
                "params": params or {},
                "error_type": type(exc).__name__,
                "message": str(exc),
                "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
                "time": _now_iso(),
            },
        )
        self._failed = failed
        self.update_meta(points_failed=failed)
        return p

    def failure_path(self, point_key: str) -> Path:
        """``failures/<point>.json``; over-long keys are shortened with a hash (file-name limits)."""
        name = point_key or "_"
        if len(name.encode("utf-8")) > 180:
            import hashlib

            name = name[:160] + "-" + hashlib.sha1(point_key.encode("utf-8")).hexdigest()[:12]
        return self.path / FAILURES_DIR / f"{name}.json"

    def clear_failure(self, point_key: str) -> None:
        """Forget an earlier failure of a point that now succeeded (after --resume)."""
        p = self.failure_path(point_key)
        if p.exists():
            failed = self._failures_count()
            p.unlink()
            self._failed = max(failed - 1, 0)
            self.update_meta(points_failed=self._failed)

    def _failures_count(self) -> int:
        """Recorded failures, counted once and then kept by record/clear (never a glob per point)."""
        if self._failed is None:
            self._failed = len(self.failures())
        return self._failed

    def failures(self) -> list[dict[str, Any]]:
        """Every recorded failure."""
        d = self.path / FAILURES_DIR
        if not d.is_dir():
            return []
        out = []
        for f in sorted(d.glob("*.json")):
            try:
                out.append(json.loads(f.read_text(encoding="utf-8")))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                continue  # a damaged failure record must not hide the others
        return out


def check_table_name(name: str) -> None:
    """A named table's name: ``/``-separated segments of letters, digits and ``_ . = , + -``.

    Raises:
        ValueError: the name is empty, a segment starts with '.' or ends in '.parts', or has other characters.
    """
    if not isinstance(name, str) or not name or any(not _TABLE_SEGMENT.fullmatch(s) or s.endswith(PARTS_SUFFIX) for s in name.split("/")):
        raise ValueError(
            f"table name {name!r}: use letters, digits and _ . = , + - in '/'-separated segments "
            f"that neither start with '.' nor end in '{PARTS_SUFFIX}' (e.g. 'requests/rate=4')"
        )


def damaged_file(path: Path, exc: BaseException | str, hint: str = "") -> RunStoreError:
    """The error for a run-folder file that cannot be read: ``<file>: unreadable (<reason>); the run folder is damaged``."""
    reason = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    return RunStoreError(f"{path}: unreadable ({reason}); the run folder is damaged" + (f" ({hint})" if hint else ""))


def read_run_json(path: Path) -> dict[str, Any]:
    """Read one JSON file of a run folder (run.json, config.json, env.json, ...); each is an object.

    Raises:
        RunStoreError: the file cannot be read, is not JSON or not a JSON object.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise damaged_file(path, exc) from exc
    if not isinstance(data, dict):
        raise damaged_file(path, f"a JSON {type(data).__name__}, not an object")
    return data


def _from_pandas(v: Any) -> Any:
    if hasattr(v, "item") and not isinstance(v, (list, dict, str)):
        try:
            v = v.item()
        except (ValueError, AttributeError):
            return v
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def list_runs(out: Path, damaged: list[tuple[Path, RunStoreError]] | None = None) -> list[RunStore]:
    """Every run folder under a results root, oldest first.

    Args:
        out: the results root (``<out>/<study>/<run>/run.json``).
        damaged: when given, gets ``(folder, error)`` of each folder whose run.json is
            unreadable (skipped from the result either way).
    """
    out = Path(out)
    if not out.is_dir():
        return []
    runs = []
    for meta in sorted(out.glob(f"*/*/{RUN_META}")):
        try:
            runs.append(RunStore.open(meta.parent))
        except RunStoreError as exc:
            if damaged is not None:
                damaged.append((meta.parent, exc))
    runs.sort(key=lambda r: (str(r.meta.get("started")), r.path.name))
    return runs
