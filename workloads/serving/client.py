"""Targets behind one interface: the built-in engine in process, or an OpenAI-compatible URL.

A target sends one request and fills a :class:`~charbench.workloads.serving.metrics.ClientRecord`
with client-side timestamps (``time.perf_counter``), one per token::

    target = EngineTarget(EngineConfig(model="tiny"))        # loads the model
    target = HttpTarget("http://127.0.0.1:8000", api="completions")
    async with target.session():                              # per event loop
        await target.send(rec, prompt, hooks)
    target.shutdown()

HTTP: ``POST /v1/completions`` (or ``/v1/chat/completions``) with ``stream: true`` and
``stream_options.include_usage``; the SSE stream is parsed incrementally from raw bytes
(``data: {...}`` events, ``data: [DONE]`` at the end). Every event that carries a choice
is one token arrival (the built-in server and vLLM send one event per token). Output
lengths are forced with the vLLM extensions ``ignore_eos`` and ``min_tokens`` (the
built-in engine honours them; ``--no-force-output-len`` leaves them out for servers that
refuse unknown fields). Token counts come from ``usage`` when the server sends it, else
from the number of token events.

Errors never raise out of :meth:`Target.send`: an HTTP error status, a refused
connection, a stream error event or a timeout is written into the record.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol
from urllib.parse import urlparse

from charbench.engine.labels import CHECKPOINT, RANDOM, RANDOM_WEIGHTS_WARNING, weights_kind
from charbench.errors import ConfigError, DeviceError
from charbench.record import Record
from charbench.workloads.serving.metrics import ClientRecord
from charbench.workloads.serving.prompts import TokenizerAdapter, as_tokenizer, load_tokenizer_file

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
#: GIL switch interval during in-process loads (default CPython: 5 ms)
ENGINE_SWITCH_INTERVAL_S = 0.0005
APIS: tuple[str, ...] = ("completions", "chat")


class Hooks(Protocol):
    """What the load generator wants to hear about while a request streams."""

    def first_token(self, t: float) -> None:
        """The first token arrived at ``t``."""

    def finished(self, t: float, had_first_token: bool) -> None:
        """The request ended at ``t``."""

    def sending_stopped(self, sent: int) -> None:
        """``--max-duration`` passed: only the first ``sent`` requests of the load went out."""


class NoHooks:
    """Hooks that do nothing (warm-up requests)."""

    def first_token(self, t: float) -> None:
        """Ignore."""

    def finished(self, t: float, had_first_token: bool) -> None:
        """Ignore."""

    def sending_stopped(self, sent: int) -> None:
        """Ignore."""


class Target:
    """Base class of a serving target.

    Attributes:
        kind: ``engine`` or ``url``.
        label: what the run records as the target.
        tokenizer: the target's tokenizer, or None when unknown.
        max_model_len: longest prompt + output it accepts (None when unknown).
        force_output_len: send ``ignore_eos``/``min_tokens`` so outputs have the asked length.
        local: runs on this machine, so this machine's meters measure its energy.
    """

    kind = "base"
    label = ""
    tokenizer: TokenizerAdapter | None = None
    max_model_len: int | None = None
    force_output_len = True
    local = True

    def session(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """Per-event-loop resources (an HTTP connection pool)."""
        return contextlib.nullcontext()  # type: ignore[return-value]

    async def send(self, rec: ClientRecord, prompt: str | list[int], hooks: Hooks) -> None:
        """Send one request and fill ``rec``; never raises for request errors."""
        raise NotImplementedError

    async def server_records(self, records: list[ClientRecord]) -> None:
        """Attach the target's own timing of each request (``rec.server``) when it has any."""

    def describe(self) -> Record:
        """Facts about the target, stored in each point's record."""
        return Record({"target": self.label, "target_kind": self.kind})

    def shutdown(self) -> None:
        """Free heavy resources (the engine's model)."""


def weights_fields(weights: str | None, who: str) -> Record:
    """Record fields saying which weights served a load: ``engine_weights`` (``random``,
    ``checkpoint`` or null) with the random-weights warning, or the null's reason.

    Args:
        weights: what the target says it serves.
        who: the target, for the reason ("the server at URL").
    """
    out = Record().set("engine_weights", weights,
                       reason=f"{who} does not say whether its weights are random ('weights' in /v1/models)")
    if weights == RANDOM:
        # completions of random weights are meaningless text; every record and report says so
        out.warn(RANDOM_WEIGHTS_WARNING)
    return out


# --------------------------------------------------------------------------- engine


class EngineTarget(Target):
    """The built-in engine, in this process (an ``AsyncLLMEngine`` loop thread)."""

    kind = "engine"

    def __init__(self, cfg: Any, engine: Any | None = None) -> None:
        """Build and start the engine (loads the model) unless ``engine`` is given.

        Args:
            cfg: a :class:`charbench.engine.api.EngineConfig`.
            engine: an already built ``AsyncLLMEngine`` (tests); it is started here.
        """
        self.cfg = cfg
        if engine is None:
            from charbench.engine.engine import AsyncLLMEngine

            engine = AsyncLLMEngine(cfg)
        self.engine = engine
        self.engine.start()
        self.tokenizer = as_tokenizer(self.engine.tokenizer, source=f"engine:{cfg.model}")
        self.max_model_len = int(self.engine.max_model_len)
        self.label = "engine"
        self._dead: str | None = None

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[EngineTarget]:
        """Shorten the GIL switch interval while a load runs.

        The engine loop thread runs Python between torch calls; with the default 5 ms
        interval it can hold the GIL that long and delay the dispatcher's sends.
        """
        old = sys.getswitchinterval()
        sys.setswitchinterval(min(old, ENGINE_SWITCH_INTERVAL_S))
        try:
            yield self
        finally:
            sys.setswitchinterval(old)

    @property
    def dead(self) -> str | None:
        """Why the engine stopped serving (None while it runs)."""
        if self._dead is None and not getattr(self.engine, "is_running", True):
            self._dead = "the engine loop stopped"
        return self._dead

    async def send(self, rec: ClientRecord, prompt: str | list[int], hooks: Hooks) -> None:
        """Stream one request through ``AsyncLLMEngine.generate``."""
        from charbench.engine.api import SamplingParams

        n = rec.expected_output_tokens
        params = SamplingParams(
            max_tokens=n,
            min_tokens=n if self.force_output_len else 0,
            ignore_eos=self.force_output_len,
            temperature=0.0,
        )
        last: Any = None
        rec.send_s = time.perf_counter()
        try:
            async for out in self.engine.generate(prompt, params, rec.request_id):
                t = time.perf_counter()
                k = len(out.new_token_ids)
                if k:
                    if rec.first_token_s is None:
                        rec.first_token_s = t
                        hooks.first_token(t)
                    rec.token_times_s.extend([t] * k)
                    rec.output_tokens += k
                last = out
        except asyncio.CancelledError:
            rec.error = "cancelled"
            raise
        except Exception as exc:  # engine errors are request errors, counted by the caller
            rec.error = f"{type(exc).__name__}: {exc}"
            if type(exc).__name__ == "EngineDeadError":
                self._dead = str(exc)
        finally:
            rec.end_s = time.perf_counter()
            hooks.finished(rec.end_s, rec.first_token_s is not None)
        rec.output_tokens_source = "engine"
        if last is not None:
            r = last.record
            rec.prompt_tokens = r.prompt_tokens
            rec.server = {
                "ttft_ms": r.ttft_ms,
                "e2el_ms": r.e2el_ms,
                "tpot_ms": r.tpot_ms,
                "itl_ms": r.itl_ms,
                "output_tokens": r.output_tokens,
                "preemptions": r.preemptions,
                "finish_reason": r.finish_reason,
                "queue_ms": None if r.first_scheduled_time_s is None else (r.first_scheduled_time_s - r.arrival_time_s) * 1e3,
            }
            if last.finish_reason == "abort" and rec.error is None:
                rec.error = "aborted by the engine"

    def describe(self) -> Record:
        """Engine facts: the config knobs that need a restart."""
        c = self.cfg
        return Record({
            "target": "engine",
            "target_kind": "engine",
            "engine_model": c.model,
            "engine_device": c.device,
            "max_model_len": self.max_model_len,
        }).merge(weights_fields(weights_kind(self.engine), "the engine"))

    def shutdown(self) -> None:
        """Stop the engine loop and free the model."""
        with contextlib.suppress(Exception):
            self.engine.shutdown()


# --------------------------------------------------------------------------- http


def normalize_base_url(url: str) -> str:
    """``http://h:p[/v1[/completions]]`` -> ``http://h:p``.

    Raises:
        ConfigError: not an http(s) URL with a host.
    """
    u = urlparse(url.strip())
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ConfigError(f"--target: {url!r} is not 'engine' or an http(s) URL like http://127.0.0.1:8000")
    path = u.path.rstrip("/")
    for suffix in ("/v1/chat/completions", "/v1/completions", "/v1"):
        if path.endswith(suffix):
            path = path[: -len(suffix)]
            break
    return f"{u.scheme}://{u.netloc}{path}"


def _tokenizer_for(spec: str | None, model_name: str | None) -> TokenizerAdapter | None:
    """A tokenizer file/folder, a charbench model (preset or checkpoint), or None."""
    from pathlib import Path

    if spec:
        p = Path(spec)
        if p.is_file() or (p.is_dir() and (p / "tokenizer.json").is_file()):
            return load_tokenizer_file(spec)
        try:
            from charbench.engine.runner import resolve_model_config
            from charbench.engine.tokenizer import load_tokenizer

            return as_tokenizer(load_tokenizer(spec, resolve_model_config(spec)), source=f"charbench:{spec}")
        except ConfigError as exc:
            raise ConfigError(f"--tokenizer {spec}: not a tokenizer.json, a checkpoint folder or a charbench preset ({exc})") from exc
    if model_name:
        try:
            from charbench.engine.runner import resolve_model_config
            from charbench.engine.tokenizer import load_tokenizer

            return as_tokenizer(load_tokenizer(model_name, resolve_model_config(model_name)), source=f"charbench:{model_name}")
        except Exception:  # not a charbench model: the tokenizer is unknown
            return None
    return None


class SseParser:
    """Incremental ``text/event-stream`` parser over raw byte chunks.

    ``feed(chunk)`` returns the ``data:`` payloads of the events completed by the chunk
    (multi-line data joined with newlines). Handles LF and CRLF line ends and events split
    anywhere across chunks.
    """

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[str]:
        """Add bytes; return the data of each event they complete."""
        buf = self._buf + chunk
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        out: list[str] = []
        while True:
            i = buf.find(b"\n\n")
            if i < 0:
                break
            event, buf = buf[:i], buf[i + 2 :]
            data = [ln[5:].lstrip(b" ") if ln.startswith(b"data:") else None for ln in event.split(b"\n")]
            lines = [d for d in data if d is not None]
            if lines:
                out.append(b"\n".join(lines).decode("utf-8", "replace"))
        self._buf = buf
        return out


class HttpTarget(Target):
    """An OpenAI-compatible server (``/v1/completions`` or ``/v1/chat/completions``)."""

    kind = "url"

    def __init__(
        self,
        url: str,
        api: str = "completions",
        model: str | None = None,
        tokenizer: str | None = None,
        timeout_s: float = 600.0,
        force_output_len: bool = True,
        max_connections: int = 1024,
    ) -> None:
        """Describe the target; nothing is contacted until :meth:`probe`.

        Args:
            url: base URL (``http://127.0.0.1:8000``; a trailing ``/v1...`` is dropped).
            api: ``completions`` or ``chat``.
            model: model name to send; None asks ``/v1/models``.
            tokenizer: tokenizer.json / checkpoint folder / charbench preset (None: the
                served model's, when it is a charbench model).
            timeout_s: per-request limit (s); a request over it counts as timed out.
            force_output_len: send ``ignore_eos`` and ``min_tokens``.
            max_connections: HTTP connection pool size.

        Raises:
            ConfigError: bad URL or API.
        """
        if api not in APIS:
            raise ConfigError(f"--api: unknown API {api!r}; valid: {', '.join(APIS)}")
        self.base = normalize_base_url(url)
        self.api = api
        self.path = "/v1/completions" if api == "completions" else "/v1/chat/completions"
        self.model = model
        self._tokenizer_spec = tokenizer
        self.timeout_s = timeout_s
        self.force_output_len = force_output_len
        self.max_connections = max_connections
        host = urlparse(self.base).hostname or ""
        self.local = host in LOOPBACK
        self.label = self.base
        self._client: Any = None
        self.records_supported: bool | None = None
        self.max_num_seqs: int | None = None
        self.weights: str | None = None  # "random"/"checkpoint" when /v1/models says (charbench serve does)

    def probe(self, timeout_s: float = 10.0) -> None:
        """Ask ``/v1/models`` for the served model and its context; load the tokenizer.

        Raises:
            DeviceError: the server does not answer (dead target) or serves no model.
            ConfigError: ``--model`` names a model the server does not serve.
        """
        import httpx

        try:
            r = httpx.get(self.base + "/v1/models", timeout=timeout_s)
        except httpx.HTTPError as exc:
            raise DeviceError(f"--target {self.base}: no answer from /v1/models ({type(exc).__name__}: {exc}); is the server running?") from exc
        served: list[dict[str, Any]] = []
        if r.status_code == 200:
            with contextlib.suppress(ValueError, AttributeError):
                served = list(r.json().get("data") or [])
        names = [str(m.get("id")) for m in served if m.get("id")]
        if self.model is None:
            if not names:
                raise DeviceError(f"--target {self.base}: /v1/models answered {r.status_code} without a model; pass --model NAME")
            self.model = names[0]
        for m in served:
            if m.get("id") == self.model:
                if isinstance(m.get("max_model_len"), int):
                    self.max_model_len = int(m["max_model_len"])
                if isinstance(m.get("max_num_seqs"), int):  # servers that say their batch limit
                    self.max_num_seqs = int(m["max_num_seqs"])
                if m.get("weights") in (RANDOM, CHECKPOINT):
                    self.weights = str(m["weights"])
        self.tokenizer = _tokenizer_for(self._tokenizer_spec, self.model)

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[HttpTarget]:
        """An ``httpx.AsyncClient`` bound to the running event loop."""
        import httpx

        limits = httpx.Limits(max_connections=self.max_connections, max_keepalive_connections=self.max_connections)
        timeout = httpx.Timeout(self.timeout_s, connect=min(10.0, self.timeout_s))
        async with httpx.AsyncClient(base_url=self.base, limits=limits, timeout=timeout) as client:
            self._client = client
            try:
                yield self
            finally:
                self._client = None

    def payload(self, prompt: str | list[int], max_tokens: int) -> dict[str, Any]:
        """The JSON body of one streaming request."""
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.api == "completions":
            body["prompt"] = prompt
        else:
            text = prompt if isinstance(prompt, str) else " ".join(str(t) for t in prompt)
            body["messages"] = [{"role": "user", "content": text}]
            body["max_completion_tokens"] = max_tokens
        if self.force_output_len:
            body["ignore_eos"] = True
            body["min_tokens"] = max_tokens
        return body

    async def send(self, rec: ClientRecord, prompt: str | list[int], hooks: Hooks) -> None:
        """Stream one request; errors and timeouts go into ``rec``."""
        import httpx

        if self._client is None:
            raise RuntimeError("HttpTarget.send outside `async with target.session()`")
        body = json.dumps(self.payload(prompt, rec.expected_output_tokens)).encode()
        events: list[tuple[float, str, Any]] = []  # (t, text, finish_reason)
        usage: dict[str, Any] | None = None
        done_s: float | None = None
        # Build the request before the clock starts: client-side request construction is
        # not the server's latency.
        request = self._client.build_request("POST", self.path, content=body, headers=_JSON_HEADERS)
        rec.send_s = time.perf_counter()
        try:
            async with _deadline(self.timeout_s):
                async with _streamed(self._client, request) as resp:
                    rec.server_id = resp.headers.get("x-request-id")
                    if resp.status_code != 200:
                        raw = await resp.aread()
                        rec.error = f"HTTP {resp.status_code}: {_error_text(raw)}"
                    else:
                        parser = SseParser()
                        done = False
                        async for chunk in resp.aiter_raw():
                            if done:
                                continue  # drain the body: a fully read response keeps its connection alive
                            t = time.perf_counter()
                            for data in parser.feed(chunk):
                                if data == "[DONE]":
                                    done = True
                                    done_s = t
                                    break
                                try:
                                    obj = json.loads(data)
                                except ValueError:
                                    rec.error = f"bad SSE data: {data[:200]!r}"
                                    continue
                                if "error" in obj:
                                    rec.error = f"stream error: {_error_text(json.dumps(obj).encode())}"
                                    continue
                                if rec.server_id is None and isinstance(obj.get("id"), str):
                                    rec.server_id = obj["id"]
                                if obj.get("usage"):
                                    usage = obj["usage"]
                                choices = obj.get("choices") or []
                                if not choices:
                                    continue
                                ch = choices[0]
                                if self.api == "chat":
                                    delta = ch.get("delta") or {}
                                    if "content" not in delta or (delta.get("role") and not delta.get("content")):
                                        continue  # the opening role chunk carries no token
                                    text = delta.get("content") or ""
                                else:
                                    text = ch.get("text") or ""
                                if rec.first_token_s is None:
                                    rec.first_token_s = t
                                    hooks.first_token(t)
                                events.append((t, text, ch.get("finish_reason")))
                        if not done and rec.error is None:
                            rec.error = "stream ended without [DONE]"
        except (TimeoutError, httpx.TimeoutException):
            rec.timed_out = True
            rec.error = f"timed out after {self.timeout_s:g} s"
        except httpx.HTTPError as exc:
            rec.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        except asyncio.CancelledError:
            rec.error = "cancelled"
            raise
        finally:
            # the response ended at [DONE] (draining the connection afterwards is not latency)
            rec.end_s = done_s if done_s is not None else time.perf_counter()
            hooks.finished(rec.end_s, rec.first_token_s is not None)
        if usage is not None and events and len(events) == int(usage.get("completion_tokens") or 0) + 1:
            # a trailing finish-only event (empty text) is not a token
            if events[-1][1] == "" and events[-1][2] is not None:
                events.pop()
        rec.token_times_s = [e[0] for e in events]
        if usage is not None and usage.get("completion_tokens") is not None:
            rec.output_tokens = int(usage["completion_tokens"])
            rec.output_tokens_source = "usage"
            if usage.get("prompt_tokens") is not None:
                rec.prompt_tokens = int(usage["prompt_tokens"])
        else:
            rec.output_tokens = len(events)
            rec.output_tokens_source = "events"
        if rec.error is None and not events:
            rec.error = "no token received"

    async def server_records(self, records: list[ClientRecord]) -> None:
        """Join ``GET /v1/charbench/records?ids=...`` (the built-in server's own timing)."""
        if self._client is None or self.records_supported is False:
            return
        ids = [r.server_id for r in records if r.server_id]
        found: dict[str, dict[str, Any]] = {}
        for i in range(0, len(ids), 100):
            batch = ids[i : i + 100]
            try:
                resp = await self._client.get("/v1/charbench/records", params={"ids": ",".join(batch)})
            except Exception:
                return
            if resp.status_code != 200:
                self.records_supported = False
                return
            self.records_supported = True
            for d in resp.json().get("data") or []:
                found[str(d.get("request_id"))] = d
        for r in records:
            d = found.get(r.server_id or "")
            if d is not None:
                r.server = {k: d.get(k) for k in ("ttft_ms", "e2el_ms", "tpot_ms", "itl_ms", "output_tokens", "preemptions", "finish_reason")}
                ft, fs, arr = d.get("first_token_time_s"), d.get("first_scheduled_time_s"), d.get("arrival_time_s")
                r.server["queue_ms"] = (fs - arr) * 1e3 if fs is not None and arr is not None else None
                sa = d.get("server_arrival_time_s")
                r.server["server_ttft_from_http_ms"] = (ft - sa) * 1e3 if ft is not None and sa is not None else None

    def describe(self) -> Record:
        """URL, API and served model."""
        out = Record({
            "target": self.base,
            "target_kind": "url",
            "target_api": self.api,
            "served_model": self.model,
            "max_model_len": self.max_model_len,
        })
        out.set("tokenizer_source", self.tokenizer.source if self.tokenizer else None, reason="no tokenizer (pass --tokenizer)")
        return out.merge(weights_fields(self.weights, f"the server at {self.base}"))


_JSON_HEADERS = {"content-type": "application/json"}


@contextlib.asynccontextmanager
async def _streamed(client: Any, request: Any) -> AsyncIterator[Any]:
    """``client.send(request, stream=True)`` as a context manager that closes the response."""
    resp = await client.send(request, stream=True)
    try:
        yield resp
    finally:
        await resp.aclose()


def _deadline(seconds: float) -> contextlib.AbstractAsyncContextManager[Any]:
    """A whole-request deadline (Python >= 3.11); on 3.10 httpx's read timeout applies."""
    if hasattr(asyncio, "timeout"):
        return asyncio.timeout(seconds)
    return contextlib.nullcontext()  # type: ignore[return-value]


def _error_text(raw: bytes) -> str:
    try:
        obj = json.loads(raw)
        err = obj.get("error", obj)
        if isinstance(err, dict):
            return str(err.get("message") or err)[:300]
        return str(err)[:300]
    except (ValueError, AttributeError):
        return raw[:300].decode("utf-8", "replace")
