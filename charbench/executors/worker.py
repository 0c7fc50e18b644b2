"""The worker side: run one unit of work (a resource group's points) on this node, into a staging store.

The same per-group code as the local executor runs here (:func:`charbench.study.run_group`),
with this node's own Context: its meters, sampler, idle baseline and GPU control, restored
on every exit path. What the points wrote comes back as batches (see
:mod:`charbench.executors.staging`), one per finished point, handed to ``sink`` as each
point ends so that a node lost later loses no completed point.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from charbench.config import CommonOptions
from charbench.errors import CharbenchError
from charbench.executors.staging import Batch, NodeInfo, StagingStore, describe_node

#: points of a unit: (sweep index, point key, knob values)
Members = list[tuple[int, str, dict[str, Any]]]


@dataclass
class GroupTask:
    """What a worker receives: the study (pickled with cloudpickle), one group of points and the run's settings."""

    unit: str
    attempt: int
    study: Any
    group: dict[str, Any]
    members: Members
    device: str
    settings: Any
    common: CommonOptions
    run_dir: Path
    cache_dir: Path | None = None
    #: the node's name when the executor knows it better than the host name (Ray's node id)
    node_name: str | None = None


@dataclass
class GroupResult:
    """What a worker sends back: where it ran, its batches, and the error that stopped the group (if any)."""

    unit: str
    node: NodeInfo
    batches: list[Batch] = field(default_factory=list)
    #: the message of the CharbenchError that stopped the group (a point failed without --continue-on-error)
    error: str | None = None


def run_group_task(task: GroupTask, sink: Callable[[Batch, NodeInfo], None] | None = None) -> GroupResult:
    """Run ``task``'s points on this node and return their batches (each also given to ``sink`` as it ends).

    Raises:
        KeyboardInterrupt: the driver cancelled the work (clocks are restored first).
    """
    from charbench.study import Context, _close_run, _Logger, _start_measurement, run_group

    node = describe_node(task.device, task.node_name)
    store = StagingStore(task.run_dir, node, prefix=f"{task.unit}/{task.attempt}")
    result = GroupResult(task.unit, node)
    log = _Logger(quiet=task.common.json)
    study = task.study

    def flush(_key: str | None = None) -> None:
        batch = store.flush()
        if batch is not None and sink is not None:
            sink(batch, node)

    ctx: Context | None = None
    status = "failed"
    try:
        ctx = Context(task.device, store, task.common.seed, task.settings, log, gpus=study.gpus(task.device),  # type: ignore[arg-type]
                      measures=study.measures)
        ctx.cache_dir = task.cache_dir
        if study.measures:
            _start_measurement(ctx, task.settings, log)
        study.setup(ctx)
        flush()

        def after(key: str) -> None:
            flush(key)
            ctx.cooldown()  # type: ignore[union-attr]

        run_group(study, ctx, store, task.common, task.group, task.members, log, after_point=after, describe=store.point_started)
        status = "completed"
    except CharbenchError as exc:
        result.error = str(exc)
    finally:
        _close_run(study, ctx, store, status, log)  # type: ignore[arg-type]
        flush()
    result.batches = list(store.batches)
    return result


def run_staged_task(task: GroupTask, stage_dir: Path) -> GroupResult:
    """:func:`run_group_task` that also writes each batch under ``stage_dir`` on the shared filesystem.

    A SLURM job killed mid-group leaves its finished points there; the driver collects them.
    SIGTERM (``scancel``, which submitit's own handler would ignore) ends the job the way
    Ctrl-C does: clocks and power limits are restored before it exits.
    """
    import pickle

    from charbench.results import atomic_write_bytes
    from charbench.signals import sigterm_as_interrupt

    def sink(batch: Batch, node: NodeInfo) -> None:
        name = batch.batch_id.replace("/", "_")
        atomic_write_bytes(stage_dir / f"{name}.pkl", pickle.dumps((batch, node)))

    with sigterm_as_interrupt():
        return run_group_task(task, sink)


def staged_batches(stage_dir: Path, unit: str) -> list[tuple[Batch, NodeInfo]]:
    """The batches a unit's jobs staged (every attempt), in the order they were written."""
    import pickle

    found = []
    prefix = unit.replace("/", "_") + "_"
    for p in sorted(stage_dir.glob(f"{prefix}*.pkl"), key=lambda p: p.stat().st_mtime_ns):
        try:
            found.append(pickle.loads(p.read_bytes()))
        except (OSError, pickle.UnpicklingError, EOFError):
            continue  # a file cut short by the kill: its point is run again
    return found
