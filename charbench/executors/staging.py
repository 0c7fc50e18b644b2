"""What a worker writes, recorded instead of written, and the driver's replay of it into the run folder.

A worker (a Ray task, a SLURM job) runs resource groups exactly as the local loop does, but
against a :class:`StagingStore`: every write the spine or the study makes (records, sampler
rows, named tables, failures, JSON artifacts) becomes an operation in a batch, one batch per
finished point. The driver, the run folder's only writer, replays the batches into its
:class:`~charbench.results.RunStore` with :class:`Replayer`, which never applies a batch twice.
"""

from __future__ import annotations

import functools
import json
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: a recorded store call: (method name, positional arguments)
Op = tuple[str, tuple[Any, ...]]

#: store methods a worker may call, replayed in order on the driver
REPLAYED = ("append_records", "append_samples", "write_table", "append_table", "record_failure", "clear_failure", "write_json",
            "update_meta")


@dataclass
class NodeInfo:
    """Where a group ran: the node's name, the GPU it used and its environment (once per node)."""

    name: str
    gpu: str | None
    gpu_reason: str | None
    env: dict[str, Any] = field(default_factory=dict)


def node_name() -> str:
    """This node's name: SLURM's node name inside a job, else the host name."""
    import os

    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


@functools.lru_cache(maxsize=1)
def node_env() -> dict[str, Any]:
    """This node's environment (GPUs, driver, clocks, library versions), collected once per process.

    A Ray worker process runs many units; collecting it once (and ahead of the first unit,
    see :func:`charbench.executors.ray_exec.warm_worker`) keeps it off every point's path.
    """
    from charbench.envinfo import collect_env

    return collect_env(argv=[])


@functools.lru_cache(maxsize=8)
def describe_node(device: str, name: str | None = None) -> NodeInfo:
    """This node's :class:`NodeInfo` for ``device`` (``cpu`` or ``cuda:i``), with its environment (collected once per worker process)."""
    from charbench.device import gpu_index

    env = node_env()
    idx = gpu_index(device)
    if idx is None:
        return NodeInfo(name or node_name(), None, f"no GPU: the point ran on {device}", env)
    gpus = env.get("gpus") or []
    model = next((g.get("name") for g in gpus if isinstance(g, dict) and g.get("index") == idx), None)
    label = f"{model} ({device})" if model else device
    return NodeInfo(name or node_name(), label, None, env)


def now_iso() -> str:
    """The wall-clock time now, ISO 8601 with milliseconds and the UTC offset (timeline stamps)."""
    import datetime as dt

    return dt.datetime.now().astimezone().isoformat(timespec="milliseconds")


class PointClock:
    """When each point started (the runner announces a point just before running it); its end is when its records arrive."""

    def __init__(self) -> None:
        self._started: dict[str, str] = {}

    def start(self, key: str) -> None:
        """Note that point ``key`` starts now."""
        self._started[key] = now_iso()

    def span(self, key: str) -> tuple[str | None, str]:
        """``(started_at, ended_at)`` of ``key``, ended now (started None when it was not announced)."""
        return self._started.pop(key, None), now_iso()


def stamp_records(records: list[dict[str, Any]], node: NodeInfo, clock: PointClock | None = None) -> list[dict[str, Any]]:
    """``records`` with ``node`` and ``gpu`` set (a CPU point's ``gpu`` is null with its reason).

    With ``clock``, each record also gets ``point_started_at``/``point_ended_at`` (ISO times on
    the node that ran it): the report's timeline of which node ran which point.
    """
    out = []
    spans: dict[str, tuple[str | None, str]] = {}
    for r in records:
        rec = {**r, "node": node.name, "gpu": node.gpu}
        if clock is not None:
            key = str(r.get("point_key"))
            if key not in spans:  # a point with several records: one span for all of them
                spans[key] = clock.span(key)
            rec["point_started_at"], rec["point_ended_at"] = spans[key]
        if node.gpu is None:
            reasons = json.loads(rec.get("null_reasons") or "{}")
            reasons["gpu"] = node.gpu_reason or "not known"
            rec["null_reasons"] = json.dumps(reasons, sort_keys=True)
        out.append(rec)
    return out


class StampingStore:
    """A RunStore seen through a node: every record appended names the node and GPU; all else passes through."""

    def __init__(self, inner: Any, node: NodeInfo) -> None:
        self._inner = inner
        self.node = node
        self.clock = PointClock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def point_started(self, key: str) -> None:
        """Note that point ``key`` starts now (its records get its start and end times)."""
        self.clock.start(key)

    def append_records(self, records: list[dict[str, Any]]) -> None:
        """Append ``records`` stamped with this node and their times (see :func:`stamp_records`)."""
        self._inner.append_records(stamp_records(records, self.node, self.clock))

    def append_samples(self, rows: list[dict[str, Any]]) -> None:
        """Append sampler rows, each naming the node that sampled it."""
        self._inner.append_samples([{**r, "node": self.node.name} for r in rows])


class RemoteFailure(Exception):
    """A point's failure as a worker saw it (its type name, message and traceback travel as text)."""

    def __init__(self, error_type: str, message: str, traceback_text: str) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.traceback_text = traceback_text


@dataclass
class Batch:
    """The store operations of one finished point (or of a group's end: samples, baseline)."""

    batch_id: str
    keys: list[str]
    ops: list[Op]


class StagingStore:
    """The store a worker's Context writes to: each call is kept as an operation for the driver.

    ``path`` is the driver's run folder (messages name it); reads of the run (checkpoints)
    are not available on a worker, which is why ordered studies run only locally.
    """

    def __init__(self, path: Path, node: NodeInfo, prefix: str) -> None:
        self.path = path
        self.node = node
        self._prefix = prefix
        self._ops: list[Op] = []
        self._keys: list[str] = []
        self._seq = 0
        self.batches: list[Batch] = []
        self.clock = PointClock()

    def point_started(self, key: str) -> None:
        """Note that point ``key`` starts now (its records get its start and end times)."""
        self.clock.start(key)

    def append_records(self, records: list[dict[str, Any]]) -> None:
        """Keep ``records`` (stamped with the node and their times) for the driver."""
        recs = stamp_records([dict(r) for r in records], self.node, self.clock)
        self._keys.extend(str(r["point_key"]) for r in recs)
        self._ops.append(("append_records", (recs,)))

    def append_samples(self, rows: list[dict[str, Any]]) -> None:
        """Keep sampler rows, each naming the node."""
        if rows:
            self._ops.append(("append_samples", ([{**r, "node": self.node.name} for r in rows],)))

    def write_table(self, name: str, frame: Any) -> Path:
        """Keep a whole named table (as Arrow, which pickles without pandas' object overhead).

        Returns where the driver writes it (``<run>/tables/<name>.parquet``), as RunStore does:
        studies record that path in their records.

        Raises:
            ValueError: a bad table name (refused here, on the worker, as the driver would).
        """
        from charbench.parts import frame_table
        from charbench.results import TABLES_DIR, check_table_name

        check_table_name(name)
        self._ops.append(("write_table", (name, frame_table(frame))))
        return Path(self.path) / TABLES_DIR / f"{name}.parquet"

    def append_table(self, name: str, frame: Any) -> Path:
        """Keep rows for a named table; returns the table's file after the run closes (its parts are numbered by the driver)."""
        from charbench.parts import frame_table
        from charbench.results import TABLES_DIR, check_table_name

        check_table_name(name)
        self._ops.append(("append_table", (name, frame_table(frame))))
        return Path(self.path) / TABLES_DIR / f"{name}.parquet"

    def record_failure(self, point_key: str, exc: BaseException, params: dict[str, Any] | None = None) -> None:
        """Keep a point's failure (type, message, traceback as text)."""
        import traceback

        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self._ops.append(("record_failure", (point_key, type(exc).__name__, str(exc), tb, params or {})))

    def clear_failure(self, point_key: str) -> None:
        """Keep the clearing of an earlier failure of a point that now succeeded."""
        self._ops.append(("clear_failure", (point_key,)))

    def write_json(self, name: str, obj: Any) -> None:
        """Keep a JSON artifact (``baseline.json`` becomes this node's baseline in ``nodes.json``)."""
        self._ops.append(("write_json", (name, obj)))

    def update_meta(self, **fields: Any) -> None:
        """Keep run.json fields the study sets."""
        self._ops.append(("update_meta", (fields,)))

    def write_checkpoint(self, state: Any, point_key: str) -> None:
        """Refused: ordered studies (checkpoints) run with the local executor only."""
        raise RuntimeError("checkpoints are not available on a remote worker; run ordered studies with --executor local")

    def read_checkpoint(self) -> Any:
        """No checkpoint on a worker (ordered studies run locally)."""
        return None

    def finish(self, status: str) -> None:
        """The driver marks the run; a worker's end of its group marks nothing."""

    def flush(self) -> Batch | None:
        """Close the operations kept since the last flush into a :class:`Batch` (None when there are none)."""
        if not self._ops:
            return None
        batch = Batch(f"{self._prefix}/{self._seq}", self._keys, self._ops)
        self._seq += 1
        self._ops, self._keys = [], []
        self.batches.append(batch)
        return batch


class Replayer:
    """Applies workers' batches to the driver's RunStore, each at most once, and keeps per-node facts."""

    def __init__(self, store: Any, bar: Any = None) -> None:
        self.store = store
        self.bar = bar
        self.done: set[str] = set(store.completed_keys())
        self._applied: set[str] = set()
        self.nodes: dict[str, Any] = self._read_nodes()

    def _read_nodes(self) -> dict[str, Any]:
        p = Path(self.store.path) / "nodes.json"
        if not p.is_file():
            return {}
        try:
            return dict(json.loads(p.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            return {}

    def note_node(self, node: NodeInfo, device: str) -> None:
        """Record ``node``'s environment in ``nodes.json`` the first time it reports."""
        if node.name in self.nodes:
            return
        self.nodes[node.name] = {"gpu": node.gpu, "device": device, "env": node.env}
        self.store.write_json("nodes.json", self.nodes)

    def apply(self, batch: Batch, node: NodeInfo) -> None:
        """Replay ``batch`` unless it was applied already, or all its points are already in the run (a re-attach)."""
        if batch.batch_id in self._applied:
            return
        self._applied.add(batch.batch_id)
        if batch.keys and all(k in self.done for k in batch.keys):
            return  # collected by an earlier driver: its rows are in the run folder already
        for name, args in batch.ops:
            self._apply_op(name, args, node)
        fresh = [k for k in dict.fromkeys(batch.keys) if k not in self.done]
        self.done.update(batch.keys)
        if self.bar is not None:
            for _ in fresh:
                self.bar.advance()

    def _apply_op(self, name: str, args: tuple[Any, ...], node: NodeInfo) -> None:
        if name not in REPLAYED:
            raise ValueError(f"a worker sent an unknown store operation {name!r}")
        if name == "append_records":
            recs = [r for r in args[0] if str(r["point_key"]) not in self.done]
            if recs:
                self.store.append_records(recs)
        elif name == "record_failure":
            self.record_failure(*args, node=node.name)
        elif name == "write_json" and args[0] == "baseline.json":
            self.nodes.setdefault(node.name, {})["baseline"] = args[1]
            self.store.write_json("nodes.json", self.nodes)
        elif name == "update_meta":
            self.store.update_meta(**args[0])
        else:
            getattr(self.store, name)(*args)

    def record_failure(self, key: str, error_type: str, message: str, traceback_text: str, params: dict[str, Any], *, node: str) -> None:
        """Write ``failures/<key>.json`` as the worker saw the failure, naming the node."""
        from charbench.results import atomic_write_json

        path = self.store.record_failure(key, RemoteFailure(error_type, message, traceback_text), params)
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        data.update(error_type=error_type, traceback=traceback_text, node=node)
        atomic_write_json(Path(path), data)
