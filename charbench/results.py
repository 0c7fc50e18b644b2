"""Run records: one self-describing folder per run, written atomically.

::

    store = RunStore.create(out, "gemm-power", label="a100", config=cfg_dict, env=env_dict)
    store.append_record({"point_key": "...", "energy_j": 12.3, ...})
    store.record_failure("dtype=fp8", exc, params)
    store.finish("completed")

Layout of ``<out>/<study>/<YYYYmmdd-HHMMSS>-<label>/``: ``config.json`` (resolved),
``env.json``, ``run.json`` (study, status, counts, times, pid and host), ``results.parquet`` and
``results.csv`` (one flat row per point), ``samples.parquet`` (sampler timeline),
``failures/<point>.json``, ``report.html``. Every write is temp-file + rename, so a
crash never leaves a half-written file and every completed point stays on disk.
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
from charbench.runlock import owner_fields

RUN_META = "run.json"
CONFIG_JSON = "config.json"
ENV_JSON = "env.json"
RESULTS_PARQUET = "results.parquet"
RESULTS_CSV = "results.csv"
SAMPLES_PARQUET = "samples.parquet"
FAILURES_DIR = "failures"


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

    df = pd.DataFrame(rows)
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
            **owner_fields(),  # `charbench runs` shows a running run whose process is gone as stale
        }
        store = cls(path, run_meta)
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
        return cls(path, meta)

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
        return read_run_json(p) if p.exists() else {}

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
        saved = read_run_json(p)
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
        """Mark the run ``completed``, ``interrupted`` or ``failed``."""
        self.update_meta(status=status, finished=_now_iso())

    def write_json(self, name: str, obj: Any) -> Path:
        """Atomically write an extra JSON artifact (e.g. a calibration) into the run folder."""
        p = self.path / name
        atomic_write_json(p, obj)
        return p

    # -- records ------------------------------------------------------------
    def records(self) -> list[dict[str, Any]]:
        """All completed point records, in completion order."""
        if self._records is None:
            p = self.path / RESULTS_PARQUET
            if p.exists():
                df = _read_parquet(p, "its results.csv may still hold the completed points")
                self._records = [{k: _from_pandas(v) for k, v in row.items()} for row in df.to_dict("records")]
            else:
                self._records = []
        return self._records

    def completed_keys(self) -> set[str]:
        """``point_key`` of every completed point (``--resume`` skips them)."""
        return {str(r["point_key"]) for r in self.records() if "point_key" in r}

    def append_record(self, record: dict[str, Any]) -> None:
        """Add one completed point and rewrite results.parquet/.csv atomically."""
        self.append_records([record])

    def append_records(self, records: list[dict[str, Any]]) -> None:
        """Add several records with one write (e.g. one point that yields many rows).

        Raises:
            ValueError: a record has no ``point_key``.
        """
        if any("point_key" not in r for r in records):
            raise ValueError("a record needs a point_key")
        recs = self.records()
        new = recs + [dict(r) for r in records]
        self._write_results(new)
        # Only after both files are on disk does the in-memory list change (a failed write keeps it in step).
        recs[:] = new
        self.update_meta(points_done=len({r["point_key"] for r in recs}), points_failed=len(self.failures()))

    def _write_results(self, recs: list[dict[str, Any]]) -> None:
        import io

        df = _frame(recs)
        buf = io.BytesIO()
        df.to_parquet(buf, index=False)
        atomic_write_bytes(self.path / RESULTS_PARQUET, buf.getvalue())
        atomic_write_text(self.path / RESULTS_CSV, df.to_csv(index=False))

    def results_frame(self):  # -> pandas.DataFrame
        """Completed points as a DataFrame (empty frame when none)."""
        return _frame(self.records())

    # -- samples ------------------------------------------------------------
    def write_samples(self, rows: list[dict[str, Any]]) -> None:
        """Replace samples.parquet with the sampler timeline so far."""
        if not rows:
            return
        import io

        buf = io.BytesIO()
        _frame(rows).to_parquet(buf, index=False)
        atomic_write_bytes(self.path / SAMPLES_PARQUET, buf.getvalue())

    def samples_frame(self):  # -> pandas.DataFrame | None
        """The sampler timeline, or None when nothing was sampled."""
        p = self.path / SAMPLES_PARQUET
        if not p.exists():
            return None
        return _read_parquet(p, "delete samples.parquet to render the rest")

    # -- failures -----------------------------------------------------------
    def record_failure(self, point_key: str, exc: BaseException, params: dict[str, Any] | None = None) -> Path:
        """Write ``failures/<point>.json`` with the error type, message and traceback."""
        p = self.failure_path(point_key)
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
        self.update_meta(points_failed=len(self.failures()))
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
            p.unlink()
            self.update_meta(points_failed=len(self.failures()))

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


def _read_parquet(path: Path, hint: str):  # -> pandas.DataFrame
    """Read a run folder's parquet file; a damaged one is a :class:`RunStoreError`, not a crash."""
    import pandas as pd

    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid/OSError for truncated or foreign files
        raise damaged_file(path, exc, hint) from exc


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
