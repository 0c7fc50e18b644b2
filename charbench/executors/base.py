"""The executor interface and the dispatch loop every remote executor shares.

An executor runs a sweep's resource groups. :class:`LocalExecutor` runs them in this
process (today's loop). A :class:`RemoteExecutor` sends each unit (a resource group; a
single point for a study without resource knobs) to a worker, replays what comes back into
the run folder as it arrives, retries a unit whose worker or node was lost up to
``--max-retries`` times (only the points it did not finish), and then records the rest as
failures naming the node and the reason. Engine-specific subclasses implement
``submit``/``poll``/``cancel``.
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from charbench.config import CommonOptions
from charbench.errors import CharbenchError, ConfigError
from charbench.executors.staging import NodeInfo, Replayer, StampingStore, describe_node
from charbench.executors.worker import GroupResult, GroupTask, Members


class Executor:
    """Runs resource groups for :func:`charbench.study.run_study` (pass it as ``executor=``)."""

    #: the executor's ``--executor`` name
    name = "local"
    #: True when the groups run in this process (the driver measures; setup runs here)
    runs_here = True

    def check(self, study: Any) -> None:
        """Refuse a study this executor cannot run, before a run folder exists.

        Raises:
            ConfigError: naming ``--executor`` and the fix.
        """

    def run(self, study: Any, ctx: Any, store: Any, common: CommonOptions, groups: list[tuple[dict[str, Any], Members]], log: Any,
            bar: Any) -> None:
        """Run ``groups`` into ``store`` (the driver's RunStore)."""
        raise NotImplementedError


class LocalExecutor(Executor):
    """Today's loop, in this process; every record names this node and the GPU."""

    def run(self, study: Any, ctx: Any, store: Any, common: CommonOptions, groups: list[tuple[dict[str, Any], Members]], log: Any,
            bar: Any) -> None:
        """Run every group here (see :func:`charbench.study.run_groups_here`)."""
        from charbench.study import run_groups_here

        node = describe_node(ctx.device)
        Replayer(store).note_node(node, ctx.device)
        stamped = StampingStore(store, node)
        ctx.store = stamped
        try:
            run_groups_here(study, ctx, stamped, common, groups, log, _TimingBar(bar, stamped))
        finally:
            ctx.store = store


class _TimingBar:
    """The progress bar as the local loop sees it: announcing a point also starts its clock (timeline stamps)."""

    def __init__(self, bar: Any, stamped: StampingStore) -> None:
        self._bar = bar
        self._stamped = stamped

    def describe(self, key: str) -> None:
        """Start ``key``'s clock, then show it on the bar."""
        self._stamped.point_started(key)
        if self._bar is not None and hasattr(self._bar, "describe"):
            self._bar.describe(key)

    def advance(self) -> None:
        """One more point done."""
        if self._bar is not None:
            self._bar.advance()


class WorkerLost(Exception):
    """A point's worker or node went away before the point finished."""


@dataclass
class Unit:
    """One piece of work sent to a worker: a group's points not finished yet, and which attempt this is."""

    unit: str
    group: dict[str, Any]
    members: Members
    attempt: int = 0


@dataclass
class Lost:
    """A unit whose worker ended without a result: where and why."""

    reason: str
    node: str | None = None


def unit_id(members: Members) -> str:
    """A stable name for a unit: its first point's key and a hash of all of them (same on every re-attach)."""
    keys = "\n".join(k for _, k, _ in members)
    return hashlib.sha1(keys.encode("utf-8")).hexdigest()[:12]


def make_units(study: Any, groups: list[tuple[dict[str, Any], Members]]) -> list[Unit]:
    """Resource groups as units; a study without resource knobs sends each point on its own (nothing to share)."""
    if study.resource_knobs:
        return [Unit(unit_id(m), g, list(m)) for g, m in groups]
    return [Unit(unit_id([item]), g, [item]) for g, m in groups for item in m]


class RemoteExecutor(Executor):
    """The dispatch loop of executors whose workers run elsewhere (Ray, SLURM)."""

    runs_here = False
    #: seconds between polls of pending units (each poll is bounded: a lost node never blocks the driver)
    poll_s = 0.2

    def __init__(self, max_retries: int = 1, detach: bool = False) -> None:
        self.max_retries = max_retries
        self.detach = detach

    def check(self, study: Any) -> None:
        """Refuse ordered studies (their state lives in one process) off this machine."""
        if study.ordered:
            raise ConfigError(f"--executor {self.name}: {study.name} runs its points in order with state carried between them, "
                              "which cannot be spread over workers; use --executor local")

    # -- engine-specific hooks ----------------------------------------------
    def start(self, store: Any, log: Any) -> None:
        """Connect to the engine (called once, before the first submit)."""

    def slots(self) -> int:
        """How many units may be pending at once."""
        return 1 << 30

    def submit(self, task: GroupTask) -> Any:
        """Start ``task`` on a worker; returns a handle."""
        raise NotImplementedError

    def poll(self, handles: list[Any], timeout_s: float) -> list[tuple[Any, GroupResult | Lost]]:
        """Handles that ended within ``timeout_s``, each with its result or why it was lost."""
        raise NotImplementedError

    def salvage(self, handle: Any, unit: Unit) -> list[tuple[Any, NodeInfo]]:
        """Batches a lost unit finished before it was lost (staged on a shared filesystem), if any."""
        return []

    def reattach(self, store: Any, units: list[Unit], log: Any) -> dict[Any, Unit]:
        """Jobs of an earlier driver of this run to wait for instead of submitting again (``--resume``)."""
        return {}

    def submitted(self, handle: Any, unit: Unit) -> None:
        """Note a submitted unit (a ledger for re-attaching)."""

    def cancel(self, handles: list[Any]) -> None:
        """Stop pending work (Ctrl-C); workers restore their clocks on the way out."""

    def close(self) -> None:
        """Disconnect from the engine."""

    # -- the loop -------------------------------------------------------------
    def run(self, study: Any, ctx: Any, store: Any, common: CommonOptions, groups: list[tuple[dict[str, Any], Members]], log: Any,
            bar: Any) -> None:
        """Send every unit to a worker and replay the results as they arrive (see the module docstring).

        Raises:
            CharbenchError: a point failed (or a unit was lost past its retries) without ``--continue-on-error``.
            Detached: ``--detach``: every unit is submitted and the driver leaves them running.
        """
        replay = Replayer(store, bar)
        queue = deque(make_units(study, groups))
        self.start(store, log)
        pending: dict[Any, Unit] = {}
        try:
            pending.update(self.reattach(store, list(queue), log))
            covered = {k for u in pending.values() for _, k, _ in u.members}
            queue = deque(u for u in queue if not any(k in covered for _, k, _ in u.members))
            while queue or pending:
                while queue and (self.detach or len(pending) < self.slots()):
                    unit = queue.popleft()
                    handle = self.submit(self._task(study, ctx, store, common, unit))
                    pending[handle] = unit
                    self.submitted(handle, unit)
                if self.detach:
                    raise Detached(f"{len(pending)} job(s) keep running; collect them with --resume {store.path}")
                for handle, outcome in self.poll(list(pending), self.poll_s):
                    unit = pending.pop(handle)
                    if isinstance(outcome, GroupResult):
                        self._collect(replay, outcome, ctx.device)
                        if outcome.error is not None and not common.continue_on_error:
                            raise CharbenchError(outcome.error)
                    else:
                        for batch, node in self.salvage(handle, unit):
                            replay.note_node(node, ctx.device)
                            replay.apply(batch, node)
                        retry = self._lost(replay, unit, outcome, common, log)
                        if retry is not None:
                            queue.append(retry)
        except Detached:
            raise
        except BaseException:
            self.cancel(list(pending))
            raise
        finally:
            self.close()

    def _task(self, study: Any, ctx: Any, store: Any, common: CommonOptions, unit: Unit) -> GroupTask:
        return GroupTask(unit=unit.unit, attempt=unit.attempt, study=study, group=unit.group, members=unit.members, device=ctx.device,
                         settings=ctx.settings, common=common, run_dir=Path(store.path), cache_dir=ctx.cache_dir)

    @staticmethod
    def _collect(replay: Replayer, result: GroupResult, device: str) -> None:
        replay.note_node(result.node, device)
        for batch in result.batches:
            replay.apply(batch, result.node)

    def _lost(self, replay: Replayer, unit: Unit, lost: Lost, common: CommonOptions, log: Any) -> Unit | None:
        """A retry of the unfinished points of a lost unit, or None once they are recorded as failed."""
        left = [m for m in unit.members if m[1] not in replay.done]
        if not left:
            return None
        where = lost.node or "an unknown node"
        if unit.attempt < self.max_retries:
            log(f"worker lost on {where} ({lost.reason}); retrying {len(left)} point(s) (attempt {unit.attempt + 2} of {self.max_retries + 1})")
            return Unit(unit.unit, unit.group, left, unit.attempt + 1)
        message = f"worker lost on {where}: {lost.reason} (after {unit.attempt + 1} attempt(s); --max-retries {self.max_retries})"
        for _, key, params in left:
            replay.record_failure(key, WorkerLost.__name__, message, "", params, node=where)
            if replay.bar is not None:
                replay.bar.advance()
        log.error(f"{len(left)} point(s) failed: {message}")
        if not common.continue_on_error:
            raise CharbenchError(f"{message}; completed points are kept in {replay.store.path}. Rerun with --continue-on-error "
                                 f"to go on past lost workers, or --resume {replay.store.path}")
        return None


class Detached(KeyboardInterrupt):
    """``--detach``: the driver stops after submitting; the run is marked interrupted and ``--resume`` re-attaches.

    A KeyboardInterrupt so that the runner takes the interrupted path (the run folder stays
    resumable), but the remote jobs are not cancelled.
    """

    exit_code = 0

