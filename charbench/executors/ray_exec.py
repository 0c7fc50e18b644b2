"""Ray: each unit as a Ray task on a node that has the devices it needs.

Measured points run with Ray's automatic retries off (``max_retries=0``): a retry is the
driver's decision (``--max-retries``), recorded in the log, so no point is measured twice
without anyone knowing. A CUDA unit asks for as many GPUs as the study meters
(``num_gpus``), so Ray never puts two measured points on one GPU at once; a CPU unit asks
for one CPU. Without ``--ray-address`` a private local Ray instance is started (bound to
127.0.0.1), never a live cluster joined by accident.

Streaming: each finished point of a unit of several points (a resource group) is sent at
once to a small collector actor on the driver's node, so a node lost mid-group loses none of
the points it finished (they are replayed; only the rest is retried), and the collector knows
which node a lost unit ran on. A unit of one point has nothing to stream: no collector is
started for a sweep of such units (one process fewer), and a lost one's node comes from
Ray's NodeDiedError.
Connecting happens in :meth:`RayExecutor.check`, before the driver builds its run folder,
and one warm-up task per node imports charbench and collects the node's environment
meanwhile: a cold worker's start is paid while the driver sets up, not on the first point.
"""

from __future__ import annotations

import os
from typing import Any

from charbench.errors import ConfigError
from charbench.executors.base import Lost, RemoteExecutor, Unit
from charbench.executors.staging import Batch, NodeInfo
from charbench.executors.worker import GroupResult, GroupTask, run_group_task

EXTRA_HINT = "pip install 'charbench[ray]'"

#: a local instance binds loopback, keeps no token file and phones nobody
LOCAL_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def import_ray() -> Any:
    """ray, or a ConfigError naming the extra that installs it."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(f"--executor ray needs Ray, which is not installed ({exc}); {EXTRA_HINT}") from None
    return ray


def warm_worker() -> str:
    """A warm-up task: import what a unit needs and collect this node's environment (cached in the worker process)."""
    import ray

    import charbench.study  # noqa: F401  (the runner a unit uses)
    from charbench.executors.staging import node_env

    node_env()
    return ray.get_runtime_context().get_node_id()


class Collector:
    """The Ray actor (on the driver's node) that keeps what units finished, point by point, until the driver takes it."""

    def __init__(self) -> None:
        self._nodes: dict[str, str] = {}
        self._batches: dict[str, list[tuple[Batch, NodeInfo]]] = {}

    def forget(self, tag: str) -> None:
        """``tag`` came back whole: drop its copies."""
        self._nodes.pop(tag, None)
        self._batches.pop(tag, None)

    def started(self, tag: str, node: str) -> None:
        """Unit attempt ``tag`` runs on ``node``."""
        self._nodes[tag] = node

    def put(self, tag: str, batch: Batch, node: NodeInfo) -> None:
        """A finished point (or group end) of ``tag``."""
        self._batches.setdefault(tag, []).append((batch, node))

    def take(self, tag: str) -> tuple[str | None, list[tuple[Batch, NodeInfo]]]:
        """The node ``tag`` ran on and the batches it sent, forgotten here."""
        return self._nodes.pop(tag, None), self._batches.pop(tag, [])


def _tag(unit: str, attempt: int) -> str:
    return f"{unit}/{attempt}"


def _run_on_node(task: GroupTask, collector: Any = None) -> GroupResult:
    """The Ray task: name the node by host and Ray node id (local test nodes share one host name), stream each point to ``collector``."""
    import ray

    from charbench.executors.staging import node_name

    task.node_name = f"{node_name()}/{ray.get_runtime_context().get_node_id()[:8]}"
    if collector is None:
        return run_group_task(task)
    tag = _tag(task.unit, task.attempt)

    def send(call: Any, *args: Any) -> None:
        try:
            ray.get(call.remote(tag, *args), timeout=30)  # blocking: a point counts as streamed once the driver's node holds it
        except ray.exceptions.RayError:
            pass  # the collector is gone (the driver with it): the result still carries every batch

    collector.started.remote(tag, task.node_name)  # not awaited: calls from one caller arrive in order, before any put
    return run_group_task(task, lambda batch, node: send(collector.put, batch, node))


class RayExecutor(RemoteExecutor):
    """Units as Ray tasks (``address``: ``auto``, ``HOST:PORT``, or None for a private local instance)."""

    name = "ray"
    #: seconds the driver waits, after Ctrl-C, for cancelled units to restore their clocks and end
    cancel_wait_s = 15.0

    def __init__(self, address: str | None = None, max_retries: int = 1, resources: dict[str, float] | None = None) -> None:
        super().__init__(max_retries=max_retries)
        self.address = address
        self.resources = dict(resources or {})
        self._ray: Any = None
        self._remote: Any = None
        self._owned = False
        self._collector: Any = None
        self._warm: list[Any] = []
        self._tags: dict[Any, str] = {}
        self._salvaged: dict[Any, list[tuple[Batch, NodeInfo]]] = {}

    def check(self, study: Any) -> None:
        """Refuse ordered studies and a missing Ray, then connect and warm one worker per node, before a run folder exists.

        Raises:
            ConfigError: an ordered study, Ray not installed, or ``--ray-address`` unreachable.
        """
        super().check(study)
        import_ray()
        self._connect()

    def _connect(self) -> None:
        """Connect to ``--ray-address`` (or start a local instance) unless this process already is; start the collector and warm-ups."""
        if self._remote is not None:
            return
        if self.address is None:
            for k, v in LOCAL_ENV.items():
                os.environ.setdefault(k, v)  # read when ray is imported and the instance starts
        ray = self._ray = import_ray()
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"logging_level": "error", "log_to_driver": False, "include_dashboard": False}
            if self.address is None:
                kwargs.update(address="local", object_store_memory=200 << 20)
            else:
                kwargs.update(address=self.address)
            try:
                ray.init(**kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ConfigError(f"--ray-address {self.address or '(local)'}: cannot connect to Ray ({exc}); "
                                  "give a running cluster's HOST:PORT, or auto inside one, or drop --ray-address for a local instance") from exc
            self._owned = True
        self._remote = ray.remote(max_retries=0)(_run_on_node)
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        warm = ray.remote(max_retries=0)(warm_worker)
        for node in ray.nodes():
            if node.get("Alive") and node.get("Resources", {}).get("CPU", 0) >= 1:
                strategy = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
                self._warm.append(warm.options(num_cpus=1, scheduling_strategy=strategy).remote())

    def start(self, store: Any, log: Any) -> None:
        """Connect (a no-op when :meth:`check` did)."""
        self._connect()

    def _collector_for(self, task: GroupTask) -> Any:
        """The collector a unit of several points streams to (started with the first such unit), None for one point."""
        if len(task.members) < 2:
            return None
        if self._collector is None:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            here = self._ray.get_runtime_context().get_node_id()
            # 0 CPUs: it only holds batches. Pinned hard to the driver's node: placed on a worker node it would die with it,
            # taking that node's finished points along.
            self._collector = self._ray.remote(Collector).options(
                num_cpus=0, max_restarts=0, max_concurrency=4, scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)).remote()
        return self._collector

    def submit(self, task: GroupTask) -> Any:
        """One Ray task per unit: its GPUs (or one CPU), no Ray retries."""
        gpus = len(task.study.gpus(task.device) or [0]) if task.device.startswith("cuda") else 0
        if gpus:
            task.device = "cuda:0"  # Ray sets CUDA_VISIBLE_DEVICES on the node: the task's first GPU is index 0 there
        opts: dict[str, Any] = {"num_cpus": 0 if gpus else 1, "num_gpus": gpus}
        if self.resources:
            opts["resources"] = self.resources
        collector = self._collector_for(task)
        ref = self._remote.options(**opts).remote(task, collector)
        if collector is not None:
            self._tags[ref] = _tag(task.unit, task.attempt)
        return ref

    def _take(self, ref: Any) -> tuple[str | None, list[tuple[Batch, NodeInfo]]]:
        tag = self._tags.pop(ref, None)
        if tag is None or self._collector is None:
            return None, []
        try:
            return self._ray.get(self._collector.take.remote(tag), timeout=30)
        except self._ray.exceptions.RayError:
            return None, []

    def poll(self, handles: list[Any], timeout_s: float) -> list[tuple[Any, GroupResult | Lost]]:
        """Tasks that ended within ``timeout_s`` (bounded: a task on a dead node never blocks the driver)."""
        ray = self._ray
        ready, _ = ray.wait(handles, num_returns=1, timeout=timeout_s)
        out: list[tuple[Any, GroupResult | Lost]] = []
        for ref in ready:
            try:
                result = ray.get(ref)
            except ray.exceptions.RayError as exc:  # NodeDiedError, WorkerCrashedError, RayTaskError, TaskCancelledError
                cause = getattr(exc, "cause", None)
                text = f"{type(cause).__name__}: {cause}" if isinstance(exc, ray.exceptions.RayTaskError) and cause is not None else f"{type(exc).__name__}: {exc}"
                node, self._salvaged[ref] = self._take(ref)
                out.append((ref, Lost(text.strip().splitlines()[0] if text.strip() else type(exc).__name__, node or self._dead_node(text))))
            else:
                tag = self._tags.pop(ref, None)
                if tag is not None and self._collector is not None:
                    self._collector.forget.remote(tag)  # the result holds every batch: drop the streamed copies (not awaited)
                out.append((ref, result))
        return out

    def _dead_node(self, text: str) -> str | None:
        """The node a NodeDiedError names ("node ID: <hex>"), as ``host/<id[:8]>`` like a unit names its node."""
        import re

        m = re.search(r"node ID: ([0-9a-f]{8,})", text)
        if m is None:
            return None
        node_id = m.group(1)
        try:
            host = next((n.get("NodeManagerHostname") for n in self._ray.nodes() if n.get("NodeID") == node_id), None)
        except Exception:  # the GCS is unreachable: the id alone still names the node
            host = None
        return f"{host or 'ray-node'}/{node_id[:8]}"

    def salvage(self, handle: Any, unit: Unit) -> list[tuple[Any, NodeInfo]]:
        """The points a lost unit streamed before its node or worker went away."""
        return self._salvaged.pop(handle, [])

    def cancel(self, handles: list[Any]) -> None:
        """Cancel the pending tasks and wait (bounded) for them to end: each worker restores its clocks on the way out.

        Not forced: ``ray.cancel`` raises KeyboardInterrupt inside the task, whose exit path
        restores clocks and power limits; the wait keeps the driver from exiting first (Ray
        kills a finished driver's tasks within about a second).
        """
        ray = self._ray
        for ref in handles:
            try:
                ray.cancel(ref, force=False)
            except Exception:  # a task that already ended
                pass
        if handles:
            try:
                ray.wait(handles, num_returns=len(handles), timeout=self.cancel_wait_s)
            except Exception:  # noqa: S110  (best effort: the run is being interrupted anyway)
                pass

    def close(self) -> None:
        """Shut down the Ray instance this executor started (not one the caller runs)."""
        self._warm.clear()
        self._collector = None
        self._remote = None
        if self._owned and self._ray is not None:
            self._ray.shutdown()
            self._owned = False
