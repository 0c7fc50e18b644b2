"""Append-only parquet tables: one part file per append, merged into one file at close.

A table stored at ``<dir>/<x>.parquet`` grows by parts ``<dir>/<x>.parts/part-<seq:08d>.parquet``,
so an append costs O(its own rows), never a rewrite of what is already on disk::

    log = PartLog(run / "results.parquet", write_bytes=atomic_write_bytes, damaged=damaged_file)
    log.append(frame)          # results.parts/part-00000001.parquet
    log.read("hint")           # compacted file + parts, in sequence order
    log.compact(fixup)         # results.parquet holds everything; the parts are gone

Crash safety: every file is written by ``write_bytes`` (temp file + rename), so a torn
write leaves only a ``.part-*.tmp`` file, which readers ignore. Compaction writes the
merged file first, stamped with the last part sequence it holds
(:data:`THROUGH_KEY` in its parquet metadata), and only then deletes the parts; a reader
that finds both skips the parts the compacted file already holds, so nothing is counted twice.

The module knows parquet and nothing of run folders: the caller passes the atomic writer
and the error for a damaged file (``charbench.results`` owns both).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

#: parquet key-value metadata of a compacted file: the last part sequence it contains
THROUGH_KEY = b"charbench.parts_through"
PARTS_SUFFIX = ".parts"
_PART = re.compile(r"^part-(\d{8,})\.parquet$")

WriteBytes = Callable[[Path, Any], None]
Damaged = Callable[[Path, BaseException, str], Exception]


def parts_dir(compacted: Path) -> Path:
    """The folder of ``compacted``'s parts: ``results.parquet`` -> ``results.parts``."""
    name = compacted.name[: -len(".parquet")] if compacted.name.endswith(".parquet") else compacted.name
    return compacted.with_name(name + PARTS_SUFFIX)


def table_entry(rows: int, columns: list[str], file: str) -> dict[str, Any]:
    """How run.json lists a named table: row count, column names, file relative to the run folder."""
    return {"rows": int(rows), "columns": list(columns), "file": file}


def table_bytes(table: Any, through: int | None = None) -> Any:
    """An Arrow table as parquet bytes (a pyarrow Buffer), optionally stamped with ``through``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if through is not None:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), THROUGH_KEY: str(through).encode()})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue()


def frame_table(frame: Any) -> Any:
    """A pandas DataFrame (or an Arrow table, passed through) as an Arrow table without its index."""
    import pyarrow as pa

    return frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=False)


class PartLog:
    """One append-only table: an optional compacted parquet file plus numbered parts.

    Args:
        compacted: path of the merged file (``.../results.parquet``).
        write_bytes: atomic writer ``(path, bytes-like) -> None``.
        damaged: builds the error for an unreadable file ``(path, exc, hint) -> Exception``.
        hint: what to tell the user when the compacted file is damaged.
        part_hint: the same for a damaged part.
    """

    def __init__(self, compacted: Path, *, write_bytes: WriteBytes, damaged: Damaged, hint: str = "", part_hint: str = "") -> None:
        self.compacted = Path(compacted)
        self.dir = parts_dir(self.compacted)
        self._write = write_bytes
        self._damaged = damaged
        self.hint = hint
        self.part_hint = part_hint
        self._next_seq: int | None = None  # scanned once, then counted: an append never lists the folder

    # -- writing --------------------------------------------------------------------------
    def append(self, frame: Any) -> Path:
        """Write ``frame`` (pandas or Arrow) as the next part; returns its path."""
        if self._next_seq is None:
            self._next_seq = max([self._through(), *self._seqs()], default=0) + 1
        path = self._part(self._next_seq)
        self._write(path, table_bytes(frame_table(frame)))
        self._next_seq += 1  # only after the part is on disk: a failed write reuses the number
        return path

    def replace(self, frame: Any) -> None:
        """Write ``frame`` as the whole table in one file; earlier parts are dropped.

        The file is stamped past every part so far, so a crash before the parts are
        deleted still reads only the new table.
        """
        seqs = self._seqs()
        through = max([self._through(), *seqs, (self._next_seq or 1) - 1])
        self._write(self.compacted, table_bytes(frame_table(frame), through=through))
        self._drop(seqs)

    def compact(self, fixup: Callable[[Any], Any] | None = None) -> Any:
        """Merge the compacted file and every part into the compacted file, then delete the parts.

        Args:
            fixup: applied to the merged DataFrame before it is written (e.g. JSON-encoding
                columns whose values differ in type between parts).

        Returns:
            The merged DataFrame, or None when there were no parts (nothing changed).
        """
        seqs = self._seqs()
        if not seqs:
            return None
        through = max(seqs)
        frame = self.read(columns=None, max_seq=through)
        if fixup is not None:
            frame = fixup(frame)
        self._write(self.compacted, table_bytes(frame_table(frame), through=through))
        self._drop(seqs)  # only now: the merged file is on disk and says which parts it holds
        return frame

    # -- reading --------------------------------------------------------------------------
    def exists(self) -> bool:
        """True when anything was stored (a compacted file or a part)."""
        return self.compacted.is_file() or bool(self._seqs())

    def read(self, columns: list[str] | None = None, max_seq: int | None = None) -> Any:
        """Everything stored, as one pandas DataFrame (None when nothing is).

        Args:
            columns: read only these columns (those a file lacks are skipped for that file).
            max_seq: ignore parts after this sequence number.

        Raises:
            Exception: ``damaged(path, ...)`` for the first file that cannot be read.
        """
        try:
            return self._read_once(columns, max_seq)
        except _Vanished:  # a compaction (another process closing the run) removed a part under us
            try:
                return self._read_once(columns, max_seq)
            except _Vanished as gone:
                raise self._damaged(gone.path, FileNotFoundError(f"{gone.path.name} vanished while reading"), self.part_hint) from None

    def _read_once(self, columns: list[str] | None, max_seq: int | None) -> Any:
        # The compacted file first, and its own stamp decides which parts are new: a merge that
        # lands meanwhile only deletes parts (-> _Vanished, read again), never doubles rows.
        tables, through = [], 0
        if self.compacted.is_file():
            tables.append(self._read_file(self.compacted, lambda f: _read_table(f, columns)))
            through = _through_of(tables[0].schema.metadata)
        seqs = [q for q in self._seqs() if q > through and (max_seq is None or q <= max_seq)]
        tables += _each(lambda q: self._read_file(self._part(q), lambda f: _read_table(f, columns)), seqs)
        return _concat(tables) if tables else None

    # -- internals ------------------------------------------------------------------------
    def _part(self, seq: int) -> Path:
        return self.dir / f"part-{seq:08d}.parquet"

    def _drop(self, seqs: list[int]) -> None:
        _each(lambda seq: self._part(seq).unlink(missing_ok=True), seqs)
        try:
            self.dir.rmdir()
        except OSError:
            pass  # a torn temp file keeps the folder (readers ignore it), as does a missing one

    def _seqs(self) -> list[int]:
        if not self.dir.is_dir():
            return []
        return sorted(int(m.group(1)) for m in (_PART.match(p.name) for p in self.dir.iterdir()) if m)

    def _through(self) -> int:
        """The last part sequence the compacted file holds (0: none, or a file from before parts)."""
        import pyarrow.parquet as pq

        if not self.compacted.is_file():
            return 0
        return _through_of(self._read_file(self.compacted, lambda f: pq.read_schema(f).metadata))

    def _read_file(self, path: Path, fn: Callable[[Path], Any]) -> Any:
        try:
            return fn(path)
        except FileNotFoundError as exc:
            if path != self.compacted:
                raise _Vanished(path) from None
            raise self._damaged(path, exc, self.hint) from exc
        except Exception as exc:  # pyarrow raises ArrowInvalid/OSError for truncated or foreign files
            hint = self.hint if path == self.compacted else self.part_hint
            raise self._damaged(path, exc, hint) from exc


class _Vanished(Exception):
    """A part listed a moment ago is gone (merged and deleted by a compaction)."""

    def __init__(self, path: Path) -> None:
        super().__init__(str(path))
        self.path = path


def _through_of(meta: dict[bytes, bytes] | None) -> int:
    """The :data:`THROUGH_KEY` stamp of a compacted file's metadata (0 when absent)."""
    try:
        return int((meta or {}).get(THROUGH_KEY, b"0"))
    except ValueError:
        return 0


def _each(fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    """``[fn(x) for x in items]``, on a few threads when there are many (file opens, reads and
    unlinks of thousands of parts wait on the file system, not on the GIL)."""
    if len(items) < 64:
        return [fn(x) for x in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(fn, items))


def _read_table(path: Path, columns: list[str] | None) -> Any:
    import pyarrow.parquet as pq

    f = pq.ParquetFile(path)  # faster than pq.read_table for the many one-row parts of a long sweep
    if columns is not None:
        columns = [c for c in columns if c in f.schema_arrow.names]
    return f.read(columns=columns)


def _concat(tables: list[Any]) -> Any:
    """One DataFrame from several Arrow tables whose columns may differ (missing ones are null)."""
    import pyarrow as pa

    if len(tables) == 1:
        return tables[0].to_pandas()
    bare = [t.replace_schema_metadata(None) for t in tables]  # each part's pandas metadata names only its own columns
    try:
        return pa.concat_tables(bare, promote_options="default").to_pandas()
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        import pandas as pd

        # A column's type differs between parts (int and text, int and bool, int and float):
        # build the frame from the rows, as one write of them all would have (pd.concat would
        # turn bools into ints). Per-row Python, but only for such mixed tables.
        return pd.DataFrame([row for t in bare for row in t.to_pylist()])
