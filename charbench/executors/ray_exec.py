"""Ray: each unit as a Ray task on a node that has the devices it needs.

Measured points run with Ray's automatic retries off (``max_retries=0``): a retry is the
driver's decision (``--max-retries``), recorded in the log, so no point is measured twice
without anyone knowing. A CUDA unit asks for as many GPUs as the study meters
(``num_gpus``), so Ray never puts two measured points on one GPU at once; a CPU unit asks
for one CPU. Without ``--ray-address`` a private local Ray instance is started (bound to
127.0.0.1), never a live cluster joined by accident.
"""

from __future__ import annotations

import os
from typing import Any

from charbench.errors import ConfigError
from charbench.executors.base import Lost, RemoteExecutor
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


def _run_on_node(task: GroupTask) -> GroupResult:
    """The Ray task: name the node by host and Ray node id (local test nodes share one host name)."""
    import ray

    from charbench.executors.staging import node_name

    task.node_name = f"{node_name()}/{ray.get_runtime_context().get_node_id()[:8]}"
    return run_group_task(task)


class RayExecutor(RemoteExecutor):
    """Units as Ray tasks (``address``: ``auto``, ``HOST:PORT``, or None for a private local instance)."""

    name = "ray"

    def __init__(self, address: str | None = None, max_retries: int = 1, resources: dict[str, float] | None = None) -> None:
        super().__init__(max_retries=max_retries)
        self.address = address
        self.resources = dict(resources or {})
        self._ray: Any = None
        self._remote: Any = None
        self._owned = False
        self._gpus = 0

    def check(self, study: Any) -> None:
        """Refuse ordered studies and a missing Ray before a run folder exists."""
        super().check(study)
        import_ray()

    def start(self, store: Any, log: Any) -> None:
        """Connect to ``--ray-address`` (or start a local instance) unless this process already is."""
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

    def submit(self, task: GroupTask) -> Any:
        """One Ray task per unit: its GPUs (or one CPU), no Ray retries."""
        gpus = len(task.study.gpus(task.device) or [0]) if task.device.startswith("cuda") else 0
        if gpus:
            task.device = "cuda:0"  # Ray sets CUDA_VISIBLE_DEVICES on the node: the task's first GPU is index 0 there
        opts: dict[str, Any] = {"num_cpus": 0 if gpus else 1, "num_gpus": gpus}
        if self.resources:
            opts["resources"] = self.resources
        return self._remote.options(**opts).remote(task)

    def poll(self, handles: list[Any], timeout_s: float) -> list[tuple[Any, GroupResult | Lost]]:
        """Tasks that ended within ``timeout_s`` (bounded: a task on a dead node never blocks the driver)."""
        ray = self._ray
        ready, _ = ray.wait(handles, num_returns=1, timeout=timeout_s)
        out: list[tuple[Any, GroupResult | Lost]] = []
        for ref in ready:
            try:
                out.append((ref, ray.get(ref)))
            except ray.exceptions.RayError as exc:  # NodeDiedError, WorkerCrashedError, RayTaskError, TaskCancelledError
                cause = getattr(exc, "cause", None)
                text = f"{type(cause).__name__}: {cause}" if isinstance(exc, ray.exceptions.RayTaskError) and cause is not None else f"{type(exc).__name__}: {exc}"
                out.append((ref, Lost(text.strip().splitlines()[0] if text.strip() else type(exc).__name__)))
        return out

    def cancel(self, handles: list[Any]) -> None:
        """Cancel the pending tasks (not forced: each worker restores its clocks on the way out)."""
        for ref in handles:
            try:
                self._ray.cancel(ref, force=False)
            except Exception:  # a task that already ended
                pass

    def close(self) -> None:
        """Shut down the Ray instance this executor started (not one the caller runs)."""
        if self._owned and self._ray is not None:
            self._ray.shutdown()
            self._owned = False
