"""The spawned tensor-parallel worker processes: start them, wait for them, stop them.

Rank 0 (the engine's process) starts ranks ``1..tp-1`` with :func:`spawn_workers`; each
runs :func:`_worker_entry`: join the process group (:class:`charbench.engine.tp.TPGroup`),
build its shard with the runner class it was given, then serve rank 0's batches until the
shutdown broadcast::

    workers = spawn_workers(cfg, world_size=2, port=free_port(), runner_cls=ModelRunner)
    wait_for(workers, "started"); ...; wait_for(workers, "ready")
    stop_workers(workers)

The runner class is a parameter (pickled by reference into the child) so that this module
does not import :mod:`charbench.engine.runner`, which imports this one.
"""

from __future__ import annotations

import multiprocessing.connection
import os
import time
import traceback
from typing import TYPE_CHECKING, Any, Callable, Protocol

import torch

from charbench.engine.tp import LOOPBACK, TPGroup, rank_device
from charbench.errors import DeviceError

if TYPE_CHECKING:
    from charbench.engine.api import EngineConfig

STARTUP_TIMEOUT_S = 600.0
"""Longest wait for workers to start and load their shard."""

Worker = tuple[Any, multiprocessing.connection.Connection]
"""A worker process and the parent end of its pipe."""


class _Runner(Protocol):
    def serve_forever(self) -> None: ...


class RunnerClass(Protocol):
    """What a worker builds its shard with (``ModelRunner``): a picklable, importable class."""

    def __call__(self, cfg: EngineConfig, *, tp_group: TPGroup, before_collectives: Callable[[], None]) -> _Runner: ...


def spawn_workers(cfg: EngineConfig, world_size: int, port: int, runner_cls: RunnerClass) -> list[Worker]:
    """Start ranks ``1..world_size-1`` as spawned processes, each building ``runner_cls``.

    Each reports ``("started", None)`` before joining the process group,
    ``("loaded", None)`` once its weights are loaded (before the first collective),
    ``("ready", None)`` once its KV cache exists, or ``("error", traceback)``.

    Returns:
        ``[(process, parent end of its pipe)]``.
    """
    ctx = torch.multiprocessing.get_context("spawn")
    out = []
    for rank in range(1, world_size):
        parent, child = ctx.Pipe()
        p = ctx.Process(target=_worker_entry, args=(runner_cls, cfg, rank, world_size, port, child),
                        name=f"charbench-tp-rank{rank}", daemon=True)
        p.start()
        child.close()
        out.append((p, parent))
    return out


def wait_for(workers: list[Worker], state: str, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
    """Wait until every worker reported ``state``.

    Raises:
        DeviceError: a worker reported an error, died, or timed out.
    """
    deadline = time.monotonic() + timeout_s
    pending = list(workers)
    while pending:
        for item in list(pending):
            proc, conn = item
            if conn.poll(0.05):
                try:
                    kind, detail = conn.recv()
                except EOFError:
                    kind, detail = "error", "pipe closed"
                if kind == "error":
                    raise DeviceError(f"tensor-parallel worker {proc.name} failed:\n{detail}")
                if kind == state:
                    pending.remove(item)
            elif not proc.is_alive():
                raise DeviceError(
                    f"tensor-parallel worker {proc.name} exited with code {proc.exitcode} "
                    f"before it was {state}"
                )
        if time.monotonic() > deadline:
            raise DeviceError(f"tensor-parallel workers not {state} after {timeout_s:.0f} s")


def stop_workers(workers: list[Worker], timeout_s: float = 30.0) -> None:
    """Join worker processes; terminate (then kill) the ones that do not exit."""
    for proc, conn in workers:
        proc.join(timeout_s)
        if proc.is_alive():
            proc.terminate()
            proc.join(5.0)
        if proc.is_alive():
            proc.kill()
            proc.join(5.0)
        conn.close()


def _worker_entry(runner_cls: RunnerClass, cfg: EngineConfig, rank: int, world_size: int, port: int,
                  conn: multiprocessing.connection.Connection) -> None:
    """Body of a spawned worker: join the group, build the shard, serve batches."""
    group = None
    try:
        device = rank_device(cfg.device, rank)
        if device.type == "cpu":
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
        conn.send(("started", None))
        group = TPGroup.init(rank, world_size, f"tcp://{LOOPBACK}:{port}", device)
        runner = runner_cls(cfg, tp_group=group, before_collectives=lambda: conn.send(("loaded", None)))
        conn.send(("ready", None))
        runner.serve_forever()
    except BaseException:  # report everything, including KeyboardInterrupt, to rank 0
        try:
            conn.send(("error", traceback.format_exc()))
        except OSError:
            pass
        raise
    finally:
        if group is not None:
            group.destroy()
        conn.close()
