"""run.json format versions: numbered migrations that bring old run folders up to date.

Every run.json carries ``format_version`` (missing means 0, a folder from before versions).
:func:`migrate` applies, in order, each migration whose number is above the folder's
version; each is a function ``(meta, run_dir) -> meta`` that only adds or reshapes
run.json fields. ``RunStore.open`` migrates in memory always and writes run.json back when
the folder is writable, so readers (report, compare, history) never patch old folders
themselves. The pattern is simonw/llm's ``migrations.py``: append a new numbered entry to
:data:`MIGRATIONS`; never edit or renumber a released one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from charbench.errors import RunStoreError
from charbench.parts import table_entry

Meta = dict[str, Any]
Migration = tuple[int, str, Callable[[Meta, Path], Meta]]

#: folder (relative to the run) where serve-sweep wrote per-request files before named tables
PRE_TABLES_REQUESTS_DIR = "requests"


def _m001_version_owner_tables(meta: Meta, run_dir: Path) -> Meta:
    """Fields every reader relies on, pid/host placeholders, and the ``tables`` listing.

    Folders from before versions may lack any field but ``study`` (old or hand-made ones);
    the report used to default them itself. Their per-request files (serve-sweep wrote
    ``requests/<load>.parquet`` directly) become named tables ``requests/<load>``.
    """
    defaults: Meta = {
        "label": "", "run_id": run_dir.name, "meta": {}, "status": None, "started": None, "finished": None,
        "points_total": None, "points_done": None, "points_failed": None, "report_hook": None, "device": None,
        "pid": None, "host": None,  # unknown owner: a `running` one is never called stale
    }
    out = {**defaults, **meta}
    tables = dict(out.get("tables") or {})
    req = run_dir / PRE_TABLES_REQUESTS_DIR
    if req.is_dir():
        import pyarrow.parquet as pq

        for f in sorted(req.glob("*.parquet")):
            try:
                footer = pq.read_metadata(f)
            except Exception:  # a damaged file stays unlisted; the report then says the load has no requests file
                continue
            tables.setdefault(f"{PRE_TABLES_REQUESTS_DIR}/{f.stem}",
                              table_entry(footer.num_rows, footer.schema.to_arrow_schema().names, f"{PRE_TABLES_REQUESTS_DIR}/{f.name}"))
    out["tables"] = tables
    return out


MIGRATIONS: list[Migration] = [
    (1, "add format_version, pid/host placeholders, tables", _m001_version_owner_tables),
]

#: the run.json format this charbench writes
FORMAT_VERSION: int = MIGRATIONS[-1][0]


def folder_version(meta: Meta, run_dir: Path) -> int:
    """The ``format_version`` of a run.json (0 when missing).

    Raises:
        RunStoreError: the version is not a whole number, or newer than :data:`FORMAT_VERSION`.
    """
    v = meta.get("format_version", 0)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise RunStoreError(f"{run_dir}: run.json format_version {v!r} is not a whole number >= 0; the run folder is damaged")
    if v > FORMAT_VERSION:
        raise RunStoreError(f"{run_dir}: run.json format_version {v} is newer than this charbench supports ({FORMAT_VERSION}); upgrade charbench")
    return v


def migrate(meta: Meta, run_dir: Path) -> tuple[Meta, bool]:
    """Apply every migration above the folder's version, in order.

    Args:
        meta: run.json as read.
        run_dir: the run folder (migrations may look at its files).

    Returns:
        ``(meta at FORMAT_VERSION, whether anything was applied)``.

    Raises:
        RunStoreError: see :func:`folder_version`.
    """
    version = folder_version(meta, run_dir)
    applied = False
    for number, _name, fn in MIGRATIONS:
        if number > version:
            meta = {**fn(dict(meta), Path(run_dir)), "format_version": number}
            applied = True
    return meta, applied
