"""The engine loop: requests in, batched model steps, tokens out.

:class:`LLMEngine` is synchronous and single-threaded: ``add_request`` queues work,
``step`` runs one scheduler iteration (decodes first, then prefill chunks, within
``max_num_batched_tokens``), one model forward and one batched sampling pass, and returns
a :class:`~charbench.engine.api.RequestOutput` for every request that got a token or
finished. :class:`AsyncLLMEngine` runs that loop in one background thread (torch releases
the GIL) and streams outputs to asyncio consumers::

    engine = LLMEngine(EngineConfig(model="tiny"))
    engine.add_request("r0", "Hello", SamplingParams(max_tokens=8))
    while engine.has_unfinished():
        for out in engine.step():
            print(out.request_id, out.new_text, out.finished)
    print(engine.get_record("r0").ttft_ms)

    aengine = AsyncLLMEngine(EngineConfig(model="tiny")); aengine.start()
    async for out in aengine.generate("Hello", SamplingParams(max_tokens=8), "r1"):
        ...
    aengine.shutdown()

Timestamps (``RequestRecord``) are ``time.perf_counter()`` seconds taken right after a
step's tokens are sampled (the sampled ids are on the host then, so the device is synced),
not when a consumer reads them.

One request never stops the engine. An exception while preparing, sampling or
detokenizing one request fails that request alone: it is logged (``charbench.engine``,
level error, with the request id), its KV blocks are freed, and its last output has
``finish_reason="error"`` and ``error`` set (``AsyncLLMEngine.generate`` raises
:class:`RequestFailedError` for it); the other requests go on. A failure that cannot be
attributed to one request (the model forward of the batch, the scheduler) fails the
requests it concerns (the batch; every scheduled request) and the loop goes on serving.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any, AsyncIterator

from charbench.engine.api import (
    EngineConfig,
    EngineStats,
    RequestOutput,
    RequestRecord,
    SamplingParams,
)
from charbench.engine.chunking import ChunkPolicy, make_chunk_policy
from charbench.engine import adaptive_chunking as _adaptive_chunking  # noqa: F401  (registers adaptive, static-decreasing)
from charbench.engine.sampling import Sampler, SamplingRow, StopChecker, make_generator
from charbench.engine.runner import SeqChunk
from charbench.engine.scheduler import Allocator, Scheduler, Sequence
from charbench.errors import CharbenchError, ConfigError

__all__ = [
    "AsyncLLMEngine",
    "EngineDeadError",
    "LLMEngine",
    "PromptTooLongError",
    "QueueFullError",
    "RequestFailedError",
]

logger = logging.getLogger("charbench.engine")


class PromptTooLongError(ConfigError):
    """The prompt plus one output token does not fit in ``max_model_len``."""


class QueueFullError(CharbenchError):
    """``EngineConfig.max_queue`` requests are already waiting (the server answers 429)."""


class EngineDeadError(CharbenchError):
    """The engine loop stopped (shut down, or the loop itself failed); no more requests are served."""


class RequestFailedError(CharbenchError):
    """The engine failed one request (the server answers 500); the engine goes on serving.

    Attributes:
        request_id: the failed request.
    """

    def __init__(self, request_id: str, message: str) -> None:
        super().__init__(f"request {request_id} failed: {message}")
        self.request_id = request_id


@dataclass
class _Request:
    """Engine-side state of one request."""

    seq: Sequence
    params: SamplingParams
    generator: Any  # torch.Generator | None
    stop: StopChecker
    record: RequestRecord


def _model_context_len(model_config: Any) -> int | None:
    """The model's trained context length, whatever the config calls it."""
    for name in ("max_position_embeddings", "max_seq_len", "context_length", "max_model_len"):
        v = getattr(model_config, name, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


class LLMEngine:
    """Synchronous engine: scheduler + model runner + sampler.

    Attributes:
        cfg: the engine configuration.
        tokenizer: the runner's tokenizer (``encode``, ``decode``, ``eos_token_id``, ...).
        model_config: the runner's model configuration.
        max_model_len: longest prompt + output in tokens.
    """

    def __init__(
        self,
        cfg: EngineConfig,
        *,
        runner: Any | None = None,
        allocator: Allocator | None = None,
        chunk_policy: ChunkPolicy | None = None,
        max_finished_records: int = 100_000,
    ) -> None:
        """Build the engine (loads or creates the model unless ``runner`` is given).

        Args:
            cfg: engine configuration.
            runner: a ``ModelRunner`` (or a stand-in with the same interface); default
                ``charbench.engine.runner.make_runner(cfg)``.
            allocator: KV block allocator; default a ``BlockAllocator`` over the runner's
                ``num_blocks``.
            chunk_policy: overrides ``cfg.chunk_policy``.
            max_finished_records: finished requests whose records ``get_record`` keeps.

        Raises:
            ConfigError: invalid limits, unknown chunk policy, or ``max_model_len`` larger
                than the KV cache or the model's context.
        """
        self.cfg = cfg
        if runner is None:
            from charbench.engine.runner import make_runner

            runner = make_runner(cfg)
        self.runner = runner
        try:
            if allocator is None:
                from charbench.engine.kv_cache import BlockAllocator

                allocator = BlockAllocator(runner.num_blocks)
            self.allocator = allocator
            self.tokenizer = runner.tokenizer
            self.model_config = runner.model_config
            self.block_size = int(runner.block_size)
            self.max_model_len = self._resolve_max_model_len()
            policy = chunk_policy or make_chunk_policy(cfg.chunk_policy, cfg.max_num_batched_tokens)
            self.scheduler = Scheduler(
                allocator,
                block_size=self.block_size,
                max_num_seqs=cfg.max_num_seqs,
                max_num_batched_tokens=cfg.max_num_batched_tokens,
                chunk_policy=policy,
            )
        except BaseException:
            runner.shutdown()
            raise
        # checkpoints may list several end tokens (Llama-3: end_of_text and eot_id)
        eos = set(getattr(self.model_config, "eos_token_ids", ()) or ())
        if getattr(self.tokenizer, "eos_token_id", None) is not None:
            eos.add(int(self.tokenizer.eos_token_id))
        self.eos_token_ids: frozenset[int] = frozenset(eos)
        self.vocab_size: int = int(self.tokenizer.vocab_size)
        self.sampler = Sampler(self.eos_token_ids, seed=cfg.seed)
        self._requests: dict[str, _Request] = {}
        self._records: OrderedDict[str, RequestRecord] = OrderedDict()
        self._max_finished_records = max_finished_records
        self._next_seq_id = 0
        self._prompt_tokens_total = 0
        self._generation_tokens_total = 0
        self._requests_finished_total = 0
        self._closed = False

    def _resolve_max_model_len(self) -> int:
        capacity = int(self.allocator.num_blocks) * self.block_size
        ctx = _model_context_len(self.model_config)
        want = self.cfg.max_model_len
        if want is None:
            return min(ctx, capacity) if ctx else capacity
        if want < 2:
            raise ConfigError(f"max_model_len must be >= 2, got {want}")
        if want > capacity:
            raise ConfigError(
                f"max_model_len={want} does not fit the KV cache ({self.allocator.num_blocks} "
                f"blocks x {self.block_size} tokens = {capacity} tokens); raise kv_cache_gb "
                "or lower max_model_len"
            )
        if ctx is not None and want > ctx:
            raise ConfigError(
                f"max_model_len={want} exceeds the model's context length {ctx}; "
                f"use max_model_len <= {ctx}"
            )
        return want

    # ---- requests ---------------------------------------------------------------------

    def encode_prompt(self, prompt: str | list[int]) -> list[int]:
        """Token ids of a prompt (text gets a BOS; id lists are checked and copied).

        Raises:
            ValueError: empty prompt or an id outside the vocabulary.
            PromptTooLongError: prompt tokens + 1 > ``max_model_len``.
        """
        if isinstance(prompt, str):
            ids = list(self.tokenizer.encode(prompt, add_bos=True))
        else:
            ids = [int(t) for t in prompt]
            bad = [t for t in ids if not 0 <= t < self.vocab_size]
            if bad:
                raise ValueError(
                    f"prompt token ids must be in [0, {self.vocab_size}); got {bad[:5]}"
                )
        if not ids:
            raise ValueError("the prompt has no tokens")
        if len(ids) + 1 > self.max_model_len:
            raise PromptTooLongError(
                f"prompt has {len(ids)} tokens; prompt + 1 output token must be <= "
                f"max_model_len={self.max_model_len}; shorten the prompt or raise max_model_len"
            )
        return ids

    def add_request(
        self,
        request_id: str,
        prompt: str | list[int],
        params: SamplingParams,
        arrival_time_s: float | None = None,
    ) -> None:
        """Queue a request (FCFS).

        Args:
            request_id: unique among unfinished requests.
            prompt: text (tokenized with a BOS) or token ids.
            params: sampling settings (validated).
            arrival_time_s: perf_counter arrival time; default now.

        Raises:
            ValueError: duplicate unfinished ``request_id`` or invalid ``params``
                (:class:`~charbench.engine.api.SamplingParamsError` names the field).
            PromptTooLongError: prompt tokens + 1 > ``max_model_len``.
        """
        if self._closed:
            raise EngineDeadError("the engine was shut down")
        if request_id in self._requests:
            raise ValueError(f"request id {request_id!r} is already in use by an unfinished request")
        params.validate(self.vocab_size)
        ids = self.encode_prompt(prompt)
        self._add_encoded(request_id, ids, params, arrival_time_s)

    def _add_encoded(
        self,
        request_id: str,
        ids: list[int],
        params: SamplingParams,
        arrival_time_s: float | None,
    ) -> None:
        if request_id in self._requests:
            raise ValueError(f"request id {request_id!r} is already in use by an unfinished request")
        arrival = time.perf_counter() if arrival_time_s is None else float(arrival_time_s)
        seq = Sequence(self._next_seq_id, request_id, ids, arrival)
        self._next_seq_id += 1
        record = RequestRecord(request_id=request_id, arrival_time_s=arrival, prompt_tokens=len(ids))
        stop = StopChecker(
            params, self.tokenizer.decode, self.eos_token_ids, self.max_model_len, len(ids)
        )
        self._requests[request_id] = _Request(seq, params, make_generator(params.seed), stop, record)
        self._records.pop(request_id, None)
        self._records[request_id] = record
        self.scheduler.add(seq)

    def abort(self, request_id: str) -> RequestOutput | None:
        """Stop a request now and free its KV blocks.

        Returns:
            The request's final output (``finish_reason="abort"``), or None when the id is
            unknown or already finished. It is not repeated by a later ``step``.
        """
        req = self._requests.pop(request_id, None)
        if req is None:
            return None
        self.scheduler.finish(req.seq)
        new_text = req.stop.finish_abort()
        self._finish_record(req, time.perf_counter(), "abort")
        return self._output(req, [], new_text, finished=True)

    def has_unfinished(self) -> bool:
        """True while a request is waiting or running."""
        return self.scheduler.has_unfinished()

    @property
    def num_waiting(self) -> int:
        """Requests not yet admitted (new or preempted)."""
        return self.scheduler.num_waiting

    def get_record(self, request_id: str) -> RequestRecord | None:
        """The timestamps of an unfinished or recently finished request (None if unknown)."""
        return self._records.get(request_id)

    def stats(self) -> EngineStats:
        """Counters for /metrics."""
        return EngineStats(
            num_waiting=self.scheduler.num_waiting,
            num_running=self.scheduler.num_running,
            kv_blocks_used=self.allocator.num_blocks - self.allocator.num_free,
            kv_blocks_total=self.allocator.num_blocks,
            prompt_tokens_total=self._prompt_tokens_total,
            generation_tokens_total=self._generation_tokens_total,
            preemptions_total=self.scheduler.num_preemptions_total,
            requests_finished_total=self._requests_finished_total,
        )

    # ---- the loop ---------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """Run one iteration; return outputs of requests that got a token or finished.

        Never raises for a request's failure: a failed request's output has
        ``finish_reason="error"`` (see the module docstring).
        """
        if self._closed:
            raise EngineDeadError("the engine was shut down")
        t_step = time.perf_counter()
        try:
            sched = self.scheduler.schedule()
        except Exception as exc:  # its state is suspect and no request can be blamed: fail all
            return self._fail_many(list(self._requests.values()), exc, "scheduling")
        outputs: list[RequestOutput] = []
        for seq in sched.preempted:
            self._requests[seq.request_id].record.preemptions += 1
        if sched.is_empty:
            return []
        now = time.perf_counter()
        chunks = []
        scheduled = []
        for c in sched.chunks:
            req = self._requests[c.seq.request_id]
            try:
                if req.record.first_scheduled_time_s is None:
                    req.record.first_scheduled_time_s = now
                chunks.append(
                    SeqChunk(
                        seq_id=c.seq.seq_id,
                        token_ids=c.token_ids,
                        start_pos=c.start_pos,
                        block_table=list(c.seq.block_table),
                        need_logits=c.need_logits,
                    )
                )
                scheduled.append(c)
            except Exception as exc:
                outputs.append(self._fail(req, exc, "preparing its chunk"))
        if not chunks:
            return outputs
        batch = [self._requests[c.seq.request_id] for c in scheduled]
        try:
            logits = self.runner.forward(chunks)
        except Exception as exc:  # one forward for the whole batch: fail the batch
            return outputs + self._fail_many(batch, exc, "running the batch's model forward")
        sampled = [c for c in scheduled if c.need_logits]
        reqs = [self._requests[c.seq.request_id] for c in sampled]
        rows = [
            SamplingRow(r.params, r.generator, r.seq.num_output_tokens, r.seq.token_ids, r.seq.num_prompt_tokens)
            for r in reqs
        ]
        tokens = self._sample(logits, rows)
        t = time.perf_counter()  # tokens are host ints now: the device has finished
        observe = getattr(self.scheduler.chunk_policy, "observe_iteration", None)
        if observe is not None:  # batch-time policies may correct their model online
            observe(t - t_step)
        for req, tok in zip(reqs, tokens):
            if isinstance(tok, Exception):
                outputs.append(self._fail(req, tok, "sampling"))
            else:
                outputs.append(self._process_one(req, tok, t))
        return outputs

    def _sample(self, logits: Any, rows: list[SamplingRow]) -> list[int | Exception]:
        """One batched sampling pass; when it raises, each row alone, so that only the
        rows that fail by themselves fail. A row sampled alone draws what the batch would
        have drawn (one uniform number per row, taken in row order after every mask, and
        the masks are idempotent), unless the batch failed after its draws."""
        try:
            return list(self.sampler.sample(logits, rows))
        except Exception as exc:
            if len(rows) == 1:
                return [exc]
        results: list[int | Exception] = []
        for i, row in enumerate(rows):
            try:
                results.append(self.sampler.sample(logits[i : i + 1], [row])[0])
            except Exception as exc:
                results.append(exc)
        return results

    def _process_one(self, req: _Request, tok: int, t: float) -> RequestOutput:
        """Append a sampled token: timestamps, detokenization, stop checks, finishing."""
        seq, rec = req.seq, req.record
        try:
            seq.append_token(tok)
            if rec.first_token_time_s is None:
                rec.first_token_time_s = t
                self._prompt_tokens_total += seq.num_prompt_tokens
            rec.token_times_s.append(t)
            rec.output_tokens += 1
            self._generation_tokens_total += 1
            new_text = req.stop.add_token(tok)
        except Exception as exc:
            return self._fail(req, exc, "detokenizing")
        finished = req.stop.finish_reason is not None
        if finished:
            del self._requests[seq.request_id]
            self.scheduler.finish(seq)
            self._finish_record(req, t, req.stop.finish_reason)
        return self._output(req, [tok], new_text, finished)

    def _fail_many(self, reqs: list[_Request], exc: Exception, stage: str) -> list[RequestOutput]:
        return [self._fail(r, exc, stage) for r in reqs if r.seq.request_id in self._requests]

    def _fail(self, req: _Request, exc: Exception, stage: str) -> RequestOutput:
        """End one request with ``finish_reason="error"``, free its blocks, log it."""
        rid = req.seq.request_id
        logger.error("request %s failed while %s: %s: %s", rid, stage, type(exc).__name__, exc, exc_info=exc)
        self._requests.pop(rid, None)
        try:
            self.scheduler.finish(req.seq)
        except Exception:  # its bookkeeping is what broke; the rest must go on
            logger.exception("request %s: freeing its KV blocks failed", rid)
        req.stop.finish_reason = "error"
        self._finish_record(req, time.perf_counter(), "error")
        out = self._output(req, [], "", finished=True)
        out.error = f"{type(exc).__name__} while {stage}: {exc}"
        return out

    def _finish_record(self, req: _Request, t: float, reason: Any) -> None:
        rec = req.record
        rec.finish_time_s = t
        rec.finish_reason = reason
        self._requests_finished_total += 1
        self._records.move_to_end(rec.request_id)
        # bound memory: forget the oldest finished records
        while len(self._records) > self._max_finished_records + len(self._requests):
            oldest = next(iter(self._records))
            if oldest in self._requests:
                break
            del self._records[oldest]

    def _output(
        self, req: _Request, new_ids: list[int], new_text: str, finished: bool
    ) -> RequestOutput:
        return RequestOutput(
            request_id=req.seq.request_id,
            new_token_ids=new_ids,
            new_text=new_text,
            token_ids=req.seq.output_token_ids,
            text=req.stop.emitted_text,
            finished=finished,
            finish_reason=req.stop.finish_reason if finished else None,
            record=req.record,
        )

    def generate(
        self, prompts: list[str | list[int]], params: SamplingParams | list[SamplingParams]
    ) -> list[RequestOutput]:
        """Run prompts to completion (offline use); returns final outputs in prompt order."""
        plist = params if isinstance(params, list) else [params] * len(prompts)
        ids = [f"gen-{uuid.uuid4().hex}" for _ in prompts]
        for rid, prompt, p in zip(ids, prompts, plist):
            self.add_request(rid, prompt, p)
        final: dict[str, RequestOutput] = {}
        while len(final) < len(ids) and self.has_unfinished():
            for out in self.step():
                if out.finished:
                    final[out.request_id] = out
        return [final[r] for r in ids]

    def shutdown(self) -> None:
        """Release the runner (idempotent)."""
        if not self._closed:
            self._closed = True
            self.runner.shutdown()


# ---- async --------------------------------------------------------------------------------


@dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue


class AsyncLLMEngine:
    """Runs :class:`LLMEngine` in a background thread and streams outputs to asyncio.

    All engine calls happen on the loop thread; ``generate`` and ``abort`` post commands
    to it. Outputs are handed to each consumer's event loop with one
    ``call_soon_threadsafe`` per loop per step.
    """

    def __init__(self, cfg: EngineConfig, engine: LLMEngine | None = None) -> None:
        """Build the engine (or wrap ``engine``); call :meth:`start` before generating."""
        self.cfg = cfg
        self.engine = engine if engine is not None else LLMEngine(cfg)
        self.tokenizer = self.engine.tokenizer
        self.model_config = self.engine.model_config
        self.max_model_len = self.engine.max_model_len
        self._cv = threading.Condition()
        self._cmds: list[tuple[str, Any]] = []
        self._num_pending_adds = 0
        self._streams: dict[str, _Stream] = {}
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._dead: BaseException | None = None
        self._stats = self.engine.stats()

    # ---- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        """Start the loop thread (idempotent)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="charbench-engine", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        """Stop the loop, fail open streams with :class:`EngineDeadError`, free the runner."""
        with self._cv:
            self._stopping = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join()
        if self._dead is None:
            self._dead = EngineDeadError("the engine was shut down")
        self._fail_streams(self._dead)
        self.engine.shutdown()

    @property
    def is_running(self) -> bool:
        """True while the loop thread is alive and healthy."""
        return self._thread is not None and self._thread.is_alive() and self._dead is None

    # ---- requests ---------------------------------------------------------------------

    @property
    def num_waiting(self) -> int:
        """Requests queued but not admitted (the server answers 429 at ``cfg.max_queue``)."""
        return self.engine.num_waiting + self._num_pending_adds

    def stats(self) -> EngineStats:
        """Counters as of the end of the latest step (plus commands not yet applied)."""
        return replace(self._stats, num_waiting=self._stats.num_waiting + self._num_pending_adds)

    def get_record(self, request_id: str) -> RequestRecord | None:
        """The request's timestamps (see ``LLMEngine.get_record``)."""
        return self.engine.get_record(request_id)

    async def generate(
        self,
        prompt: str | list[int],
        params: SamplingParams,
        request_id: str | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Submit a request and yield its outputs until the one with ``finished=True``.

        Validation happens before the first output, so errors raise from the first
        ``__anext__``. Cancelling the consumer (or closing the generator early) aborts
        the request and frees its KV blocks.

        Raises:
            EngineDeadError: the engine is not running.
            QueueFullError: ``cfg.max_queue`` requests are waiting.
            PromptTooLongError, ValueError: bad prompt, params or duplicate id.
            RequestFailedError: the engine failed this request (after it started).
        """
        if self._dead is not None:
            raise EngineDeadError(f"the engine loop stopped: {self._dead}")
        if self._thread is None:
            raise EngineDeadError("AsyncLLMEngine.start() was not called")
        if self.num_waiting >= self.cfg.max_queue:
            raise QueueFullError(
                f"{self.num_waiting} requests are waiting (max_queue={self.cfg.max_queue}); "
                "retry later or raise max_queue"
            )
        rid = request_id if request_id is not None else f"req-{uuid.uuid4().hex}"
        params.validate(self.engine.vocab_size)
        ids = self.engine.encode_prompt(prompt)  # tokenizers are thread-safe for encode
        if rid in self._streams:
            raise ValueError(f"request id {rid!r} is already in use by an unfinished request")
        arrival = time.perf_counter()
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue())
        self._streams[rid] = stream
        self._post("add", (rid, ids, params, arrival))
        if self._dead is not None:  # the loop died between the check above and the post
            self._streams.pop(rid, None)
            raise EngineDeadError(f"the engine loop stopped: {self._dead}")
        finished = False
        try:
            while True:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    finished = True  # the engine side is gone; nothing to abort
                    raise item
                if item.finished:
                    finished = True
                yield item
                if finished:
                    return
        finally:
            if not finished:
                self._streams.pop(rid, None)
                self._post("abort", (rid, False))

    def abort(self, request_id: str) -> None:
        """Abort a request; its consumer gets a final output with ``finish_reason="abort"``."""
        self._post("abort", (request_id, True))

    # ---- loop thread --------------------------------------------------------------------

    def _post(self, kind: str, payload: Any) -> None:
        with self._cv:
            if kind == "add":
                self._num_pending_adds += 1
            self._cmds.append((kind, payload))
            self._cv.notify()

    def _run(self) -> None:
        eng = self.engine
        try:
            while True:
                with self._cv:
                    while not self._cmds and not self._stopping and not eng.has_unfinished():
                        self._cv.wait()
                    if self._stopping:
                        return
                    cmds, self._cmds = self._cmds, []
                outs: list[RequestOutput | tuple[str, BaseException]] = []
                for kind, payload in cmds:
                    if kind == "add":
                        rid, ids, params, arrival = payload
                        try:
                            eng._add_encoded(rid, ids, params, arrival)
                        except Exception as e:  # e.g. a race on a duplicate id
                            outs.append((rid, e))
                        finally:
                            with self._cv:
                                self._num_pending_adds -= 1
                    else:
                        rid, deliver = payload
                        try:
                            out = eng.abort(rid)
                        except Exception:  # one request's bookkeeping; the loop goes on
                            logger.exception("request %s: abort failed", rid)
                            continue
                        if out is not None and deliver:
                            outs.append(out)
                if eng.has_unfinished():
                    outs.extend(eng.step())
                self._stats = eng.stats()
                self._deliver(outs)
        except BaseException as e:  # a bug in the loop itself (steps isolate requests)
            self._dead = e
            self._fail_streams(EngineDeadError(f"engine step failed: {e!r}"))

    def _deliver(self, outs: list[Any]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, Any]]] = {}
        for out in outs:
            if isinstance(out, tuple):
                rid, item = out
                stream = self._streams.pop(rid, None)
            else:
                rid, item = out.request_id, out
                stream = self._streams.get(rid)
                if stream is not None and out.finished:
                    self._streams.pop(rid, None)
                if out.error is not None:
                    item = RequestFailedError(rid, out.error)
            if stream is not None:
                by_loop.setdefault(stream.loop, []).append((stream.queue, item))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:
                pass  # the consumer's loop is closed

    def _fail_streams(self, err: BaseException) -> None:
        streams, self._streams = self._streams, {}
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, Any]]] = {}
        for s in streams.values():
            by_loop.setdefault(s.loop, []).append((s.queue, err))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:
                pass


def _put_all(items: list[tuple[asyncio.Queue, Any]]) -> None:
    for q, item in items:
        q.put_nowait(item)
