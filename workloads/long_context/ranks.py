"""A persistent set of ranks for one parallel layout: the long-context study's resource.

:func:`charbench.engine.lc_runner.launch` spawns and initializes gloo ranks for every
generation; a sweep runs many generations on one layout, so the study starts the ranks once
per layout (one resource group) and sends them one :class:`GenerateSpec` per point. 1x1x1
runs in this process. A rank that fails breaks the pool (its peers may be stuck in a
collective): the pool is restarted for the next point, and the failed point is recorded::

    pool = RankPool(Layout.parse("kvp=2"), threads_per_rank=1)
    result = pool.run(GenerateSpec("nano-long", prompt, chunks, 16, max_tokens_per_rank))
    pool.close()
"""

from __future__ import annotations

import datetime
import os
import pickle
import queue as queue_mod
import time
import traceback
from typing import Any

import torch

from charbench.engine.lc_runner import TIMEOUT_S, GenerateResult, GenerateSpec, generate
from charbench.engine.parallel import Layout, ParallelGroups
from charbench.errors import DeviceError


def _serve(rank: int, layout: Layout, port: int, jobs: Any, results: Any, threads: int) -> None:
    """Rank main loop: init gloo once, then run each spec until ``None`` arrives."""
    import torch.distributed as dist

    from charbench.engine.tp import loopback_store

    torch.set_num_threads(threads)
    try:
        timeout = datetime.timedelta(seconds=TIMEOUT_S)
        store = loopback_store(rank, layout.world, port, timeout)
        dist.init_process_group("gloo", rank=rank, world_size=layout.world, store=store, timeout=timeout)
        groups = ParallelGroups.init(layout, rank)
        results.put(("ready", rank))
        while True:
            spec = jobs.get()
            if spec is None:
                break
            res = generate(spec, groups)
            if rank == 0:
                # by value: a shared tensor's file descriptor dies with this process
                results.put(("ok", pickle.dumps(res)))
        dist.barrier()
        dist.destroy_process_group()
    except BaseException:
        results.put(("error", f"rank {rank}: {traceback.format_exc()}"))
        raise


class RankPool:
    """The ranks of one layout, started once and reused for every point of its group.

    Args:
        layout: the parallel layout.
        threads_per_rank: torch threads per rank (the 1x1x1 pool sets them in this process).
    """

    def __init__(self, layout: Layout, threads_per_rank: int = 1) -> None:
        self.layout, self.threads = layout, threads_per_rank
        self._procs: list[Any] = []
        self._jobs: list[Any] = []
        self._results: Any = None
        self._groups: ParallelGroups | None = None
        self.start()

    def start(self) -> None:
        """Spawn the ranks (no-op for 1x1x1) and wait until every one has joined the group.

        Raises:
            DeviceError: a rank failed to start.
        """
        if self.layout.world == 1:
            self._groups = ParallelGroups.init(self.layout, 0)
            return
        import torch.multiprocessing as mp

        from charbench.engine.tp import free_port

        ctx = mp.get_context("spawn")
        self._results = ctx.Queue()
        self._jobs = [ctx.Queue() for _ in range(self.layout.world)]
        port = free_port()
        os.environ.setdefault("OMP_NUM_THREADS", str(self.threads))
        self._procs = [ctx.Process(target=_serve, args=(r, self.layout, port, self._jobs[r], self._results, self.threads), daemon=True)
                       for r in range(self.layout.world)]
        for p in self._procs:
            p.start()
        ready = 0
        while ready < self.layout.world:
            kind, payload = self._get()
            if kind != "ready":
                self.close()
                raise DeviceError(f"--parallel {self.layout.label}: a rank failed to start: {payload}")
            ready += 1

    def _get(self) -> tuple[str, Any]:
        """Next message from the ranks; a rank that died without one is an error."""
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                return self._results.get(timeout=1.0)
            except queue_mod.Empty:
                dead = [r for r, p in enumerate(self._procs) if not p.is_alive()]
                if dead:
                    return "error", f"rank(s) {dead} exited (exit codes {[self._procs[r].exitcode for r in dead]})"
        return "error", f"no answer from the ranks within {TIMEOUT_S:.0f} s"

    def run(self, spec: GenerateSpec) -> GenerateResult:
        """One generation on every rank; rank 0's result.

        Raises:
            DeviceError: a rank failed (its traceback in the message); the pool restarts on the next call.
        """
        if self.layout.world == 1:
            prev = torch.get_num_threads()
            torch.set_num_threads(self.threads)
            try:
                assert self._groups is not None
                return generate(spec, self._groups)
            finally:
                torch.set_num_threads(prev)
        if not self._procs:
            self.start()
        for q in self._jobs:
            q.put(spec)
        kind, payload = self._get()
        if kind != "ok":
            self.close(graceful=False)
            raise DeviceError(f"--parallel {self.layout.label}: {payload}")
        return pickle.loads(payload)

    def close(self, graceful: bool = True) -> None:
        """Stop the ranks (on every exit path; safe to call twice)."""
        if graceful:
            for q in self._jobs:
                try:
                    q.put(None)
                except (OSError, ValueError):
                    pass
        for p in self._procs:
            p.join(10 if graceful else 0.1)
            if p.is_alive():
                p.terminate()
                p.join(5)
        self._procs, self._jobs = [], []
