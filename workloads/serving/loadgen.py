"""The asyncio load generator: send a planned workload to a target, timestamp every token.

::

    plan = LoadPlan(items, max_concurrency=None)              # open loop (items have times)
    plan = LoadPlan(items, closed_concurrency=8)              # closed loop, 8 users
    result = asyncio.run(run_load(target, plan, hooks=tracker))
    result.records, result.lateness                           # ClientRecords, send lateness

Open loop: request i is due at ``origin + items[i].scheduled_s``. The dispatcher sleeps
until ``spin_s`` (1 ms) before the due time (the event loop's timer granularity is about
1 ms), then yields to other tasks in a short busy loop until the due time, and starts
the request's task. With ``max_concurrency`` a due request waits for a free slot (its
send time is then later than scheduled, as in vLLM's ``--max-concurrency``).

Closed loop: ``closed_concurrency`` workers each send their next request as soon as the
previous one ends (GuideLLM's ``concurrent``/``synchronous``).

With ``max_duration_s`` no request is sent after that many seconds from the schedule's
start (requests already sent finish); the result counts the ones left ``unsent`` and the
hooks hear ``sending_stopped(sent)``.
"""

from __future__ import annotations

import asyncio
import gc
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from charbench.workloads.serving.arrivals import lateness_stats_ms
from charbench.workloads.serving.client import Hooks, NoHooks, Target
from charbench.workloads.serving.metrics import ClientRecord


#: above this many requests the cyclic GC stays on during a load (bounded memory over speed)
_GC_PAUSE_MAX_REQUESTS = 20_000


@dataclass
class WorkItem:
    """One planned request.

    Attributes:
        index: position in the workload.
        prompt: text or token ids.
        input_len: requested prompt tokens.
        prompt_tokens: prompt tokens as counted with the tokenizer (None if unknown).
        output_len: output tokens asked for.
        scheduled_s: send offset from the load's start (None in closed loop).
    """

    index: int
    prompt: str | list[int]
    input_len: int
    prompt_tokens: int | None
    output_len: int
    scheduled_s: float | None = None


@dataclass
class LoadPlan:
    """A workload and how to pace it."""

    items: list[WorkItem]
    closed_concurrency: int | None = None
    max_concurrency: int | None = None
    id_prefix: str = "req"
    max_duration_s: float | None = None


@dataclass
class LoadResult:
    """What a load run produced.

    Attributes:
        records: one per sent item, in item order.
        origin_s: the schedule's t = 0 (``perf_counter``).
        end_s: when the last request ended.
        lateness: send lateness stats (open loop without a cap), else empty.
        unsent: items not sent because ``max_duration_s`` had passed.
    """

    records: list[ClientRecord]
    origin_s: float
    end_s: float
    lateness: dict[str, Any] = field(default_factory=dict)
    unsent: int = 0


def _stop_sending(hooks: Hooks, records: list[ClientRecord], sent: int) -> int:
    """Tell the hooks that only ``sent`` of ``records`` went out; returns how many did not."""
    if sent < len(records):
        hooks.sending_stopped(sent)
    return len(records) - sent


async def _send(target: Target, item: WorkItem, rec: ClientRecord, hooks: Hooks) -> None:
    try:
        await target.send(rec, item.prompt, hooks)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a target bug must not kill the whole point
        rec.error = rec.error or f"{type(exc).__name__}: {exc}"
        if rec.end_s is None:
            rec.end_s = time.perf_counter()
            hooks.finished(rec.end_s, rec.first_token_s is not None)
    if rec.prompt_tokens is None:
        rec.prompt_tokens = item.prompt_tokens


def _record(item: WorkItem, prefix: str) -> ClientRecord:
    return ClientRecord(
        index=item.index,
        request_id=f"{prefix}-{item.index}",
        input_len=item.input_len,
        expected_output_tokens=item.output_len,
    )


async def run_load(target: Target, plan: LoadPlan, hooks: Hooks | None = None, *, spin_s: float = 0.001, lead_s: float = 0.01) -> LoadResult:
    """Run ``plan`` against ``target`` (inside ``target.session()``).

    Args:
        target: where requests go.
        plan: the workload and its pacing.
        hooks: told about first tokens and ends (the steady-state tracker).
        spin_s: how long before a due time the dispatcher stops sleeping and yields.
        lead_s: the schedule starts this long after the call (setup slack).
    """
    hooks = hooks or NoHooks()
    records = [_record(it, plan.id_prefix) for it in plan.items]
    if plan.closed_concurrency is not None:
        origin = time.perf_counter()
        deadline = math.inf if plan.max_duration_s is None else origin + plan.max_duration_s
        queue = list(zip(plan.items, records))
        queue.reverse()

        async def worker() -> None:
            while queue and time.perf_counter() <= deadline:
                item, rec = queue.pop()
                await _send(target, item, rec, hooks)

        n_workers = max(1, min(plan.closed_concurrency, len(queue)))
        await asyncio.gather(*(worker() for _ in range(n_workers)))
        sent = len(records) - len(queue)  # workers take items in order: the first `sent` went out
        unsent = _stop_sending(hooks, records, sent)
        return LoadResult(records[:sent], origin, time.perf_counter(), unsent=unsent)

    sem = asyncio.Semaphore(plan.max_concurrency) if plan.max_concurrency else None
    # A cyclic-GC pass in the middle of the schedule delays sends by milliseconds; the
    # collector is paused while requests are dispatched (reference counting still frees
    # almost everything) and resumed right after.
    gc_was_enabled = gc.isenabled()
    if len(plan.items) <= _GC_PAUSE_MAX_REQUESTS:
        gc.disable()
    origin = time.perf_counter() + lead_s
    deadline = math.inf if plan.max_duration_s is None else origin + plan.max_duration_s
    tasks: list[asyncio.Task[None]] = []
    scheduled = np.empty(len(records))
    loop = asyncio.get_running_loop()

    async def capped(item: WorkItem, rec: ClientRecord) -> None:
        assert sem is not None
        async with sem:
            await _send(target, item, rec, hooks)

    try:
        for k, (item, rec) in enumerate(zip(plan.items, records)):
            due = origin + float(item.scheduled_s or 0.0)
            if due > deadline:  # decided before sleeping: a far-off due time must not be waited for
                break
            rec.scheduled_s = due
            scheduled[k] = due
            delay = due - time.perf_counter()
            if delay > spin_s:
                await asyncio.sleep(delay - spin_s)
            while time.perf_counter() < due:
                await asyncio.sleep(0)
            coro = capped(item, rec) if sem is not None else _send(target, item, rec, hooks)
            tasks.append(loop.create_task(coro))
        await asyncio.gather(*tasks)
    finally:
        if gc_was_enabled:
            gc.enable()
        for t in tasks:
            if not t.done():
                t.cancel()
    sent = len(tasks)
    unsent = _stop_sending(hooks, records, sent)
    lateness: dict[str, Any] = {}
    if sem is None:
        lateness = lateness_stats_ms(scheduled[:sent], np.array([r.send_s for r in records[:sent]]))
    return LoadResult(records[:sent], origin, time.perf_counter(), lateness, unsent)


async def warm_up(target: Target, items: list[WorkItem]) -> int:
    """Send ``items`` at once and wait (compiles kernels, fills caches); returns errors seen."""
    recs = [_record(it, "warmup") for it in items]
    await asyncio.gather(*(_send(target, it, r, NoHooks()) for it, r in zip(items, recs)))
    return sum(1 for r in recs if not r.ok)
