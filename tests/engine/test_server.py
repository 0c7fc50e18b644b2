"""Tests of the OpenAI-compatible server over real HTTP on loopback.

Two engines back the server: a small fake async engine (deterministic, fast, with
controllable step time so that queueing and disconnects are reproducible) and the real
``AsyncLLMEngine`` with the ``tiny`` preset (skipped until it can be imported).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from charbench.engine.api import EngineStats, RequestOutput, RequestRecord, SamplingParams
from charbench.engine.openai_protocol import ChatMessage, render_chat
from charbench.engine.server import BackgroundServer, build_app
from charbench.errors import ConfigError

openai = pytest.importorskip("openai")

# --------------------------------------------------------------------------- fake engine


class EngineDeadError(Exception):
    """Stands in for charbench.engine.engine.EngineDeadError (the server matches by name)."""


class FakeTokenizer:
    """Bytes shifted by 3; 1 = BOS, 2 = EOS."""

    bos_token_id = 1
    eos_token_id = 2
    vocab_size = 259

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        return ([1] if add_bos else []) + [b + 3 for b in text.encode("utf-8")]

    def decode(self, ids: list[int]) -> str:
        return bytes(i - 3 for i in ids if i >= 3).decode("utf-8", errors="replace")


@dataclass
class _ModelConfig:
    name: str = "fake"


@dataclass
class _Seq:
    request_id: str
    prompt: list[int]
    params: SamplingParams
    record: RequestRecord
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    out_ids: list[int] = field(default_factory=list)
    text: str = ""
    blocks: int = 0
    done: bool = False


class FakeEngine:
    """An async engine with the AsyncLLMEngine interface, emitting 'abcd...' cyclically.

    One token per running sequence every ``step_s`` seconds; at most ``max_num_seqs``
    run at once, the rest wait; each running sequence holds KV blocks until it ends.
    """

    ALPHABET = "abcdefghijklmnopqrstuvwxyz"

    def __init__(self, max_model_len: int = 128, max_num_seqs: int = 8, step_s: float = 0.002) -> None:
        self.tokenizer = FakeTokenizer()
        self.model_config = _ModelConfig()
        self.max_model_len = max_model_len
        self.max_num_seqs = max_num_seqs
        self.step_s = step_s
        self.block_size = 16
        self.kv_blocks_total = 256
        self.waiting: list[_Seq] = []
        self.running: list[_Seq] = []
        self.finished_total = 0
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.aborted: list[str] = []
        self.errored = False
        self.refuse_len: int | None = None  # engine-side limit below the advertised one
        self.die_after: int | None = None  # the engine "dies" once a request has this many tokens
        self._task: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None

    # -- lifecycle
    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def shutdown(self) -> None:
        if self._task is not None:
            self._task.cancel()

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    def stats(self) -> EngineStats:
        used = sum(s.blocks for s in self.running)
        return EngineStats(
            num_waiting=len(self.waiting),
            num_running=len(self.running),
            kv_blocks_used=used,
            kv_blocks_total=self.kv_blocks_total,
            prompt_tokens_total=self.prompt_tokens_total,
            generation_tokens_total=self.generation_tokens_total,
            preemptions_total=0,
            requests_finished_total=self.finished_total,
        )

    # -- requests
    async def generate(
        self, prompt: str | list[int], params: SamplingParams, request_id: str
    ) -> AsyncIterator[RequestOutput]:
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        limit = self.refuse_len or self.max_model_len
        if len(ids) >= limit:
            raise ConfigError(f"prompt has {len(ids)} tokens; max_model_len is {limit}")
        params.validate()
        seq = _Seq(request_id, ids, params, RequestRecord(request_id, time.perf_counter(), len(ids)))
        self.waiting.append(seq)
        assert self._wake is not None
        self._wake.set()
        try:
            while True:
                out = await seq.queue.get()
                if isinstance(out, BaseException):
                    seq.done = True
                    raise out
                yield out
                if out.finished:
                    return
        finally:
            if not seq.done:  # consumer went away: abort and free blocks
                seq.done = True
                self.aborted.append(request_id)
                if seq in self.waiting:
                    self.waiting.remove(seq)
                if seq in self.running:
                    self.running.remove(seq)
                seq.blocks = 0

    async def _loop(self) -> None:
        assert self._wake is not None
        while True:
            if not self.waiting and not self.running:
                self._wake.clear()
                await self._wake.wait()
            while self.waiting and len(self.running) < self.max_num_seqs:
                seq = self.waiting.pop(0)
                seq.blocks = math.ceil((len(seq.prompt) + seq.params.max_tokens) / self.block_size)
                seq.record.first_scheduled_time_s = time.perf_counter()
                self.prompt_tokens_total += len(seq.prompt)
                self.running.append(seq)
            await asyncio.sleep(self.step_s)
            now = time.perf_counter()
            for seq in list(self.running):
                tok = 3 + ord(self.ALPHABET[len(seq.out_ids) % len(self.ALPHABET)])
                seq.out_ids.append(tok)
                self.generation_tokens_total += 1
                rec = seq.record
                rec.token_times_s.append(now)
                rec.output_tokens = len(seq.out_ids)
                if rec.first_token_time_s is None:
                    rec.first_token_time_s = now
                finished = len(seq.out_ids) >= seq.params.max_tokens
                if finished:
                    seq.done = True
                    rec.finish_time_s = now
                    rec.finish_reason = "length"
                    self.running.remove(seq)
                    seq.blocks = 0
                    self.finished_total += 1
                if self.die_after is not None and len(seq.out_ids) > self.die_after:
                    self.running.remove(seq)
                    seq.blocks = 0
                    seq.queue.put_nowait(EngineDeadError("engine step failed: boom"))
                    continue
                piece = chr(tok - 3)
                seq.text += piece
                seq.queue.put_nowait(
                    RequestOutput(
                        request_id=seq.request_id,
                        new_token_ids=[tok],
                        new_text=piece,
                        token_ids=list(seq.out_ids),
                        text=seq.text,
                        finished=finished,
                        finish_reason="length" if finished else None,
                        record=rec,
                    )
                )


def expected_text(n: int) -> str:
    return "".join(FakeEngine.ALPHABET[i % 26] for i in range(n))


# --------------------------------------------------------------------------- fixtures


@dataclass
class Served:
    engine: FakeEngine
    server: BackgroundServer

    @property
    def url(self) -> str:
        return self.server.url

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key="none", max_retries=0, timeout=30)


def _serve(engine: FakeEngine, **kw: object) -> Iterator[Served]:
    app = build_app(engine, manage_engine=True, **kw)  # type: ignore[arg-type]
    with BackgroundServer(app) as srv:
        yield Served(engine, srv)


@pytest.fixture(scope="module")
def fake() -> Iterator[Served]:
    yield from _serve(FakeEngine(), max_queue=64)


def _wait_until(cond, timeout_s: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def parse_prometheus(text: str) -> dict[str, float]:
    """Minimal Prometheus text parser: {"name{labels}": value}; checks HELP/TYPE lines."""
    values: dict[str, float] = {}
    typed: set[str] = set()
    for line in text.splitlines():
        if not line:
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            assert kind in ("gauge", "counter"), line
            typed.add(name)
            continue
        if line.startswith("# HELP "):
            continue
        assert not line.startswith("#"), line
        key, value = line.rsplit(" ", 1)
        name = key.split("{", 1)[0]
        assert name in typed, f"sample before its TYPE line: {line}"
        values[key] = float(value)
    return values


def metric(values: dict[str, float], name: str) -> float:
    hits = [v for k, v in values.items() if k.split("{", 1)[0] == name]
    assert len(hits) == 1, (name, hits)
    return hits[0]


# --------------------------------------------------------------------------- fake-engine tests


def test_completion_non_streaming(fake: Served) -> None:
    r = fake.client().completions.create(model="fake", prompt="Hello", max_tokens=5, temperature=0)
    assert r.id.startswith("cmpl-")
    assert r.object == "text_completion"
    assert r.model == "fake"
    assert r.choices[0].text == expected_text(5)
    assert r.choices[0].finish_reason == "length"
    assert r.usage is not None
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (6, 5, 11)


def test_completion_streaming_with_usage(fake: Served) -> None:
    stream = fake.client().completions.create(
        model="fake", prompt=[1, 70, 71], max_tokens=7, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text_chunks = [c for c in chunks if c.choices]
    assert "".join(c.choices[0].text for c in text_chunks) == expected_text(7)
    assert len(text_chunks) == 7  # one event per token
    assert text_chunks[-1].choices[0].finish_reason == "length"
    assert all(c.choices[0].finish_reason is None for c in text_chunks[:-1])
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("cmpl-")
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (3, 7)


def test_stream_raw_sse_framing(fake: Served) -> None:
    body = {"prompt": "x", "max_tokens": 3, "stream": True}
    with httpx.stream("POST", fake.url + "/v1/completions", json=body, timeout=10) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    payloads = [json.loads(e[len("data: "):]) for e in events[:-2]]
    assert [p["choices"][0]["text"] for p in payloads] == list(expected_text(3))
    assert "usage" not in payloads[0]  # only with stream_options.include_usage
    assert r.headers["x-request-id"] == payloads[0]["id"]


def test_chat_streaming_and_not(fake: Served) -> None:
    client = fake.client()
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    r = client.chat.completions.create(model="fake", messages=msgs, max_completion_tokens=4)
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == expected_text(4)
    prompt = render_chat([ChatMessage(**m) for m in msgs])  # type: ignore[arg-type]
    assert r.usage is not None and r.usage.prompt_tokens == len(FakeTokenizer().encode(prompt))
    assert r.usage.completion_tokens == 4
    chunks = list(
        client.chat.completions.create(
            model="fake", messages=msgs, max_tokens=4, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[0].object == "chat.completion.chunk"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected_text(4)
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4


def test_chat_default_template_documented() -> None:
    msgs = [ChatMessage(role="system", content="S"), ChatMessage(role="user", content=[{"type": "text", "text": "U"}])]
    assert render_chat(msgs) == "<|system|>\nS\n<|user|>\nU\n<|assistant|>\n"
    tmpl = "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}"
    assert render_chat(msgs, tmpl) == "[system]S[user]U[assistant]"


def test_concurrent_clients(fake: Served) -> None:
    async def one(client: openai.AsyncOpenAI, i: int) -> str:
        r = await client.completions.create(model="fake", prompt=f"p{i}", max_tokens=6 + i, stream=(i % 2 == 0))
        if i % 2 == 0:
            return "".join([c.choices[0].text async for c in r])
        return r.choices[0].text

    async def main() -> list[str]:
        async with openai.AsyncOpenAI(base_url=fake.url + "/v1", api_key="x", max_retries=0) as client:
            return await asyncio.gather(*(one(client, i) for i in range(8)))

    assert asyncio.run(main()) == [expected_text(6 + i) for i in range(8)]


@pytest.mark.parametrize(
    ("body", "param", "needle"),
    [
        (b"{not json", None, "Invalid JSON"),
        (b"[1, 2]", None, "object"),
        (b'{"prompt": "a", "max_tokens": "5"}', "max_tokens", "integer"),
        (b'{"prompt": "a", "max_tokens": 0}', "max_tokens", "greater than or equal to 1"),
        (b'{"prompt": "a", "temperature": -1}', "temperature", "greater than or equal to 0"),
        (b'{"prompt": "a", "top_p": 1.5}', "top_p", "less than or equal to 1"),
        (b'{"prompt": "a", "stream": "yes"}', "stream", "boolean"),
        (b'{"prompt": "a", "n": 2}', "n", "n=1"),
        (b'{"prompt": "a", "max_tokens": 4, "min_tokens": 5}', "min_tokens", "exceeds"),
        (b'{"prompt": ["a", "b"]}', "prompt", "one prompt per request"),
        (b'{"prompt": [1, 999]}', "prompt", "out of range"),
        (b'{"prompt": [1, 2.5]}', "prompt", "integers"),
        (b'{"max_tokens": 3}', "prompt", "required"),
        (b'{"prompt": "a", "stop": 5}', "stop", ""),
        (b'{"prompt": "a", "logprobs": 2}', "logprobs", "not supported"),
    ],
)
def test_malformed_requests_400(fake: Served, body: bytes, param: str | None, needle: str) -> None:
    r = httpx.post(fake.url + "/v1/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error"
    assert err["param"] == param or (param is not None and str(err["param"]).startswith(param))
    assert needle in err["message"]


def test_chat_malformed(fake: Served) -> None:
    for body in ({"messages": []}, {"messages": [{"role": "robot", "content": "x"}]}, {"messages": "hi"}):
        r = httpx.post(fake.url + "/v1/chat/completions", json=body)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"].startswith("messages")


def test_unknown_model_404_and_openai_client_error(fake: Served) -> None:
    with pytest.raises(openai.NotFoundError):
        fake.client().completions.create(model="gpt-4", prompt="x", max_tokens=2)
    with pytest.raises(openai.BadRequestError) as ei:
        fake.client().completions.create(model="fake", prompt="x", max_tokens=2, n=3)
    assert "n=1" in str(ei.value)


def test_too_long_prompt_400(fake: Served) -> None:
    r = httpx.post(fake.url + "/v1/completions", json={"prompt": "x" * 200, "max_tokens": 1})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "context_length_exceeded" and err["param"] == "prompt"
    assert "128" in err["message"] and "201" in err["message"]
    # prompt fits but prompt + max_tokens does not: names both numbers
    r = httpx.post(fake.url + "/v1/completions", json={"prompt": "x" * 100, "max_tokens": 50})
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
    assert "101" in r.json()["error"]["message"] and "at most 27" in r.json()["error"]["message"]
    # a defaulted max_tokens shrinks to fit instead
    r = httpx.post(fake.url + "/v1/completions", json={"prompt": "x" * 120})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 7


def test_models_health_records(fake: Served) -> None:
    m = httpx.get(fake.url + "/v1/models").json()
    assert m["object"] == "list" and m["data"][0]["id"] == "fake"
    assert httpx.get(fake.url + "/health").json()["status"] == "ok"
    r = fake.client().completions.create(model="fake", prompt="timing", max_tokens=4)
    recs = httpx.get(fake.url + "/v1/charbench/records", params={"ids": f"{r.id},nope"}).json()
    assert recs["missing"] == ["nope"]
    rec = recs["data"][0]
    assert rec["request_id"] == r.id and rec["output_tokens"] == 4 and rec["prompt_tokens"] == 7
    assert len(rec["token_times_s"]) == 4 and len(rec["itl_ms"]) == 3
    assert rec["ttft_ms"] > 0 and rec["e2el_ms"] >= rec["ttft_ms"]
    assert rec["server_arrival_time_s"] <= rec["arrival_time_s"]
    assert rec["finish_reason"] == "length"


def test_metrics_format(fake: Served) -> None:
    fake.client().completions.create(model="fake", prompt="m", max_tokens=3)
    r = httpx.get(fake.url + "/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    values = parse_prometheus(r.text)
    for name in (
        "charbench_num_requests_waiting",
        "charbench_num_requests_running",
        "charbench_kv_cache_usage_ratio",
        "charbench_prompt_tokens_total",
        "charbench_generation_tokens_total",
        "charbench_num_preemptions_total",
        "charbench_requests_finished_total",
    ):
        metric(values, name)
    assert metric(values, "charbench_generation_tokens_total") >= 3
    assert metric(values, "charbench_requests_finished_total") >= 1


def test_disconnect_mid_stream_aborts_and_frees_blocks() -> None:
    for served in _serve(FakeEngine(step_s=0.01)):
        eng = served.engine
        body = {"prompt": "long", "max_tokens": 100, "stream": True}
        with httpx.stream("POST", served.url + "/v1/completions", json=body, timeout=10) as r:
            it = r.iter_raw()
            got = b""
            while got.count(b"data: ") < 3:
                got += next(it)
            assert eng.stats().kv_blocks_used > 0
        # stream closed early: the request must be aborted and its blocks freed
        assert _wait_until(lambda: len(eng.aborted) == 1 and eng.stats().kv_blocks_used == 0)
        assert eng.stats().num_running == 0
        vals = parse_prometheus(httpx.get(served.url + "/metrics").text)
        assert metric(vals, "charbench_server_client_aborts_total") == 1
        assert metric(vals, "charbench_kv_cache_blocks_used") == 0
        # non-streaming request whose client gives up is aborted too
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(served.url + "/v1/completions", json={"prompt": "x", "max_tokens": 100}, timeout=0.2)
        assert _wait_until(lambda: len(eng.aborted) == 2 and eng.stats().kv_blocks_used == 0)


def test_queue_full_429_then_recovers() -> None:
    # one sequence at a time, slow steps, at most 2 waiting
    for served in _serve(FakeEngine(max_num_seqs=1, step_s=0.01), max_queue=2):

        async def one(client: httpx.AsyncClient) -> int:
            r = await client.post("/v1/completions", json={"prompt": "q", "max_tokens": 10})
            if r.status_code == 429:
                err = r.json()["error"]
                assert err["code"] == "queue_full" and "max_queue=2" in err["message"]
                assert r.headers["retry-after"] == "1"
            return r.status_code

        async def main() -> list[int]:
            async with httpx.AsyncClient(base_url=served.url, timeout=30) as c:
                return await asyncio.gather(*(one(c) for _ in range(8)))

        codes = asyncio.run(main())
        assert codes.count(200) >= 2 and codes.count(429) >= 1, codes
        assert set(codes) <= {200, 429}
        vals = parse_prometheus(httpx.get(served.url + "/metrics").text)
        assert vals['charbench_server_requests_rejected_total{model_name="fake",reason="queue_full"}'] == codes.count(429)
        r = httpx.post(served.url + "/v1/completions", json={"prompt": "q", "max_tokens": 2})
        assert r.status_code == 200


def test_dead_engine_503() -> None:
    for served in _serve(FakeEngine()):
        served.engine.errored = True
        assert httpx.get(served.url + "/health").status_code == 503
        r = httpx.post(served.url + "/v1/completions", json={"prompt": "q", "max_tokens": 2})
        assert r.status_code == 503 and r.json()["error"]["code"] == "engine_unavailable"


def test_engine_death_mid_request() -> None:
    eng = FakeEngine()
    eng.die_after = 3
    for served in _serve(eng):
        body = {"prompt": "x", "max_tokens": 10, "stream": True}
        with httpx.stream("POST", served.url + "/v1/completions", json=body, timeout=10) as r:
            assert r.status_code == 200
            events = r.read().decode().split("\n\n")
        assert events[-2:] == ["data: [DONE]", ""]
        err = json.loads(events[-3][6:])["error"]
        assert err["code"] == "engine_unavailable" or "boom" in err["message"]
        assert [json.loads(e[6:])["choices"][0]["text"] for e in events[:-3]] == list(expected_text(3))
        r2 = httpx.post(served.url + "/v1/completions", json={"prompt": "x", "max_tokens": 10}, timeout=10)
        assert r2.status_code >= 500 and "boom" in r2.json()["error"]["message"]
        vals = parse_prometheus(httpx.get(served.url + "/metrics").text)
        assert metric(vals, "charbench_server_requests_in_flight") == 0


def test_engine_refusal_maps_to_400() -> None:
    # the engine refuses a prompt the server's own length check let through
    eng = FakeEngine()
    eng.refuse_len = 10
    for served in _serve(eng):
        r = httpx.post(served.url + "/v1/completions", json={"prompt": "x" * 50, "max_tokens": 2})
        assert r.status_code == 400, r.text
        assert "max_model_len is 10" in r.json()["error"]["message"]
        assert eng.num_waiting == 0 and served.server.server.started


# --------------------------------------------------------------------------- real engine (tiny)


def _real_engine(**overrides: object):  # type: ignore[no-untyped-def]
    """A started AsyncLLMEngine with the tiny preset on CPU, or skip when unavailable."""
    from charbench.engine.api import EngineConfig

    from charbench.engine.engine import AsyncLLMEngine
    kw: dict[str, object] = dict(model="tiny", device="cpu", max_model_len=256, kv_cache_gb=0.02, seed=0)
    kw.update(overrides)
    engine = AsyncLLMEngine(EngineConfig(**kw))  # type: ignore[arg-type]
    engine.start()
    return engine


@pytest.fixture(scope="module")
def real() -> Iterator[Served]:
    engine = _real_engine()
    try:
        app = build_app(engine, max_queue=64)
        with BackgroundServer(app) as srv:
            yield Served(engine, srv)  # type: ignore[arg-type]
    finally:
        engine.shutdown()


def test_real_completion_stream_matches_non_stream(real: Served) -> None:
    client = real.client()
    name = real.engine.model_config.name
    kw_extra = {"ignore_eos": True}  # vLLM extension: forces the output length
    kw: dict[str, object] = dict(model=name, prompt="The quick brown fox", max_tokens=12, temperature=0)
    r = client.completions.create(**kw, extra_body=kw_extra)  # type: ignore[arg-type]
    n_prompt = len(real.engine.tokenizer.encode("The quick brown fox", add_bos=True))
    assert r.usage is not None
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (n_prompt, 12, n_prompt + 12)
    assert r.choices[0].finish_reason == "length"
    chunks = list(
        client.completions.create(**kw, stream=True, stream_options={"include_usage": True}, extra_body=kw_extra)  # type: ignore[arg-type]
    )
    text_chunks = [c for c in chunks if c.choices]
    assert len(text_chunks) == 12  # one event per token
    assert "".join(c.choices[0].text for c in text_chunks) == r.choices[0].text  # greedy: same text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12
    # token-id prompts are accepted as-is
    ids = real.engine.tokenizer.encode("The quick brown fox", add_bos=True)
    r2 = client.completions.create(model=name, prompt=ids, max_tokens=12, temperature=0, extra_body=kw_extra)
    assert r2.choices[0].text == r.choices[0].text and r2.usage is not None and r2.usage.prompt_tokens == n_prompt


def test_real_chat(real: Served) -> None:
    client = real.client()
    msgs = [{"role": "user", "content": "hello"}]
    body = {"ignore_eos": True, "min_tokens": 5}
    r = client.chat.completions.create(model="tiny", messages=msgs, max_completion_tokens=5, temperature=0, extra_body=body)  # type: ignore[arg-type]
    assert r.choices[0].message.role == "assistant" and r.usage is not None and r.usage.completion_tokens == 5
    chunks = list(
        client.chat.completions.create(model="tiny", messages=msgs, max_tokens=5, temperature=0, stream=True, extra_body=body)  # type: ignore[arg-type]
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == r.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "length"


def test_real_concurrent_8_clients(real: Served) -> None:
    async def one(client: openai.AsyncOpenAI, i: int) -> int:
        kw = dict(model="tiny", prompt=f"client {i} says", max_tokens=8 + i, temperature=0.8, seed=i,
                  extra_body={"ignore_eos": True})
        if i % 2:
            r = await client.completions.create(**kw)  # type: ignore[arg-type]
            assert r.usage is not None
            return r.usage.completion_tokens
        stream = await client.completions.create(**kw, stream=True, stream_options={"include_usage": True})  # type: ignore[arg-type]
        usage = [c.usage async for c in stream if c.usage is not None]
        return usage[0].completion_tokens

    async def main() -> list[int]:
        async with openai.AsyncOpenAI(base_url=real.url + "/v1", api_key="x", max_retries=0) as client:
            return await asyncio.gather(*(one(client, i) for i in range(8)))

    assert asyncio.run(main()) == [8 + i for i in range(8)]


def test_real_errors_and_metrics(real: Served) -> None:
    limit = real.engine.max_model_len
    r = httpx.post(real.url + "/v1/completions", json={"prompt": "x" * (limit + 10), "max_tokens": 1})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert str(limit) in r.json()["error"]["message"] and str(limit + 11) in r.json()["error"]["message"]
    r = httpx.post(real.url + "/v1/completions", content=b'{"prompt": "a",', headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(real.url + "/v1/completions", json={"prompt": [1, 10**6], "max_tokens": 1})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    vals = parse_prometheus(httpx.get(real.url + "/metrics").text)
    assert metric(vals, "charbench_kv_cache_blocks_total") > 0
    assert 0.0 <= metric(vals, "charbench_kv_cache_usage_ratio") <= 1.0
    assert metric(vals, "charbench_requests_finished_total") >= 1
    assert metric(vals, "charbench_generation_tokens_total") >= 1


def test_real_records_match_usage(real: Served) -> None:
    r = real.client().completions.create(model="tiny", prompt="abc", max_tokens=6, extra_body={"ignore_eos": True})
    data = httpx.get(real.url + "/v1/charbench/records", params={"ids": r.id}).json()["data"]
    assert len(data) == 1
    rec = data[0]
    assert rec["output_tokens"] == 6 and len(rec["token_times_s"]) == 6 and rec["finish_reason"] == "length"
    assert r.usage is not None and rec["prompt_tokens"] == r.usage.prompt_tokens
    assert rec["ttft_ms"] is not None and rec["ttft_ms"] > 0 and rec["tpot_ms"] is not None


def test_real_disconnect_frees_blocks(real: Served) -> None:
    eng = real.engine
    body = {"prompt": "stream me", "max_tokens": 200, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", real.url + "/v1/completions", json=body, timeout=30) as r:
        it = r.iter_raw()
        got = b""
        while got.count(b"data: ") < 3:
            got += next(it)
        req_id = json.loads(got.split(b"\n\n")[0][6:])["id"]
        assert eng.stats().kv_blocks_used > 0
    assert _wait_until(lambda: eng.stats().kv_blocks_used == 0 and eng.stats().num_running == 0, 10)
    rec = httpx.get(real.url + "/v1/charbench/records", params={"ids": req_id}).json()["data"][0]
    assert rec["aborted_by_client"] is True and rec["output_tokens"] < 200


def test_real_queue_full_429() -> None:
    # one running sequence at a time; the server admits at most 1 waiting request
    engine = _real_engine(max_num_seqs=1, max_queue=1000)
    try:
        with BackgroundServer(build_app(engine, max_queue=1)) as srv:

            async def main() -> tuple[int, list[int]]:
                async with httpx.AsyncClient(base_url=srv.url, timeout=60) as c:

                    async def one(n: int) -> int:
                        r = await c.post("/v1/completions", json={"prompt": "q", "max_tokens": n, "ignore_eos": True})
                        if r.status_code == 429:
                            assert r.json()["error"]["code"] == "queue_full"
                        return r.status_code

                    long = asyncio.ensure_future(one(150))
                    while engine.stats().num_running == 0:
                        await asyncio.sleep(0.005)
                    short = await asyncio.gather(*(one(4) for _ in range(3)))
                    return await long, short

            long_code, codes = asyncio.run(main())
            # the first short one waits behind the long one; the others find the queue full
            assert long_code == 200 and sorted(codes) == [200, 429, 429], codes
            assert httpx.post(srv.url + "/v1/completions", json={"prompt": "q", "max_tokens": 2}).status_code == 200
    finally:
        engine.shutdown()


def test_real_models_lists_engine_settings(real: Served) -> None:
    entry = httpx.get(real.url + "/v1/models").json()["data"][0]
    assert (entry["max_num_seqs"], entry["tp"], entry["dtype"]) == (64, 1, "fp32")


# --------------------------------------------------------------------------- lifecycle on failure


def test_server_package_imports_no_engine_or_torch() -> None:
    """Every module of the server package loads without the engine (torch): only
    run_server builds one, so build_app over a fake engine and ``serve``'s checks stay light."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import importlib, pkgutil, sys
        import charbench.engine.server as pkg
        mods = sorted(m.name for m in pkgutil.iter_modules(pkg.__path__))
        for m in mods:
            importlib.import_module(f"charbench.engine.server.{m}")
        missing = [n for n in pkg.__all__ if not hasattr(pkg, n)]
        heavy = sorted(m for m in ("torch", "charbench.engine.engine", "charbench.engine.model") if m in sys.modules)
        print(",".join(mods), "|", ",".join(missing), "|", ",".join(heavy))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "admission,app,generation,metrics_text,serving,state |  |"


def test_metrics_labels_are_escaped_on_every_line() -> None:
    from charbench.engine.server.metrics_text import metrics_text

    app = build_app(FakeEngine(), served_model_name='we"ird\\name')
    text = metrics_text(app.state.charbench)
    samples = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert samples and all('model_name="we\\"ird\\\\name"' in ln for ln in samples)
    assert parse_prometheus(text)["charbench_server_requests_rejected_total{model_name=\"we\\\"ird\\\\name\",reason=\"invalid\"}"] == 0.0


def test_background_server_that_fails_to_start_releases_its_port() -> None:
    import contextlib
    import socket

    from fastapi import FastAPI

    @contextlib.asynccontextmanager
    async def broken(_: FastAPI) -> AsyncIterator[None]:
        raise RuntimeError("startup failed")
        yield  # pragma: no cover

    srv = BackgroundServer(FastAPI(lifespan=broken))
    port = srv.port
    with pytest.raises(RuntimeError, match="server failed to start"):
        srv.start(timeout_s=20)
    assert not srv._thread.is_alive()
    with socket.socket() as s:  # the listening socket is closed: the port can be bound again
        s.bind(("127.0.0.1", port))


def test_run_server_stops_the_engine_when_the_server_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    import charbench.engine.engine as engine_mod
    from charbench.engine.server import serving as server_mod
    from charbench.engine.api import EngineConfig

    made: list[Any] = []

    class Engine(FakeEngine):
        def __init__(self, cfg: EngineConfig) -> None:
            super().__init__()
            self.cfg = cfg
            self.shutdowns = 0
            made.append(self)

        def shutdown(self) -> None:  # type: ignore[override]
            self.shutdowns += 1

    class Broken:
        def run(self, sockets: Any = None) -> None:
            raise OSError("uvicorn could not start")

    monkeypatch.setattr(engine_mod, "AsyncLLMEngine", Engine)
    monkeypatch.setattr(server_mod, "_make_uvicorn_server", lambda config: Broken())
    with pytest.raises(OSError, match="uvicorn could not start"):
        server_mod.run_server(EngineConfig(model="tiny"), host="127.0.0.1", port=0, log_level="warning")
    assert len(made) == 1 and made[0].shutdowns == 1


# --------------------------------------------------------------------------- labels, validation, limits

from charbench.engine.http_limits import header_timeout_protocol  # noqa: E402
from charbench.engine.labels import RANDOM_WEIGHTS_WARNING  # noqa: E402

FAKE_FALLBACK_WARNING = (
    "chat template: the checkpoint has none (no chat template found); /v1/chat/completions uses "
    "charbench's fallback template, which this model was not trained on (add chat_template.jinja "
    "to the checkpoint folder)"
)


def test_records_limit_not_an_int_is_an_openai_400(fake: Served) -> None:
    r = httpx.get(fake.url + "/v1/charbench/records", params={"limit": "abc"})
    assert r.status_code == 400
    assert r.json() == {"error": {
        "message": "limit: Input should be a valid integer, unable to parse string as an integer (got 'abc')",
        "type": "invalid_request_error", "param": "limit", "code": None,
    }}


def test_models_say_weights_and_chat_template(fake: Served) -> None:
    entry = httpx.get(fake.url + "/v1/models").json()["data"][0]
    # a stand-in engine does not say what its weights are: null, never a guess
    assert (entry["weights"], entry["chat_template"], entry["warnings"]) == (None, "fallback", [FAKE_FALLBACK_WARNING])


def test_real_models_say_random_weights(real: Served) -> None:
    entry = httpx.get(real.url + "/v1/models").json()["data"][0]
    assert (entry["weights"], entry["chat_template"], entry["warnings"]) == ("random", "fallback", [RANDOM_WEIGHTS_WARNING])


def test_checkpoint_server_chat_prompt_matches_apply_chat_template(hf_checkpoint_copy: Any) -> None:
    """transformers 5 layout (chat_template.jinja): the served chat prompt has exactly the
    tokens of apply_chat_template; /v1/models says checkpoint weights and template."""
    transformers = pytest.importorskip("transformers")
    from charbench.engine.api import EngineConfig
    from charbench.engine.engine import AsyncLLMEngine

    template = "{{ bos_token }}{% for m in messages %}w10 {{ m['content'] }} {{ eos_token }} {% endfor %}w11"
    with_template, _ = hf_checkpoint_copy(template, name="with")
    without, _ = hf_checkpoint_copy(None, name="without")
    msgs = [{"role": "user", "content": "w5 w6 w7"}]
    want = transformers.AutoTokenizer.from_pretrained(str(with_template)).apply_chat_template(
        msgs, add_generation_prompt=True, tokenize=True, return_dict=False)
    for folder, prompt_tokens, labels in (
        (with_template, len(want), ("checkpoint", "checkpoint", [])),
        # fallback "<|user|>\nw5 w6 w7\n<|assistant|>\n": BOS + 9 words
        (without, 10, ("checkpoint", "fallback", [
            "chat template: the checkpoint has none (no chat_template.jinja and no chat_template in "
            "tokenizer_config.json); /v1/chat/completions uses charbench's fallback template, which "
            "this model was not trained on (add chat_template.jinja to the checkpoint folder)"])),
    ):
        engine = AsyncLLMEngine(EngineConfig(model=str(folder), kv_cache_gb=0.01))
        try:
            with BackgroundServer(build_app(engine, manage_engine=True)) as srv:
                entry = httpx.get(srv.url + "/v1/models").json()["data"][0]
                assert (entry["weights"], entry["chat_template"], entry["warnings"]) == labels
                r = httpx.post(srv.url + "/v1/chat/completions", json={"messages": msgs, "max_tokens": 1})
                assert r.status_code == 200, r.text
                assert r.json()["usage"]["prompt_tokens"] == prompt_tokens
        finally:
            engine.shutdown()
    assert len(want) == 7


def _raw_request(url: str, head: bytes, chunks: list[bytes] = (), timeout_s: float = 10.0) -> tuple[bytes, float]:  # type: ignore[assignment]
    """Send ``head`` and ``chunks`` on a raw socket; read until the server closes.
    Returns (everything read, seconds from the first byte sent to the close)."""
    import socket

    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout_s) as s:
        t0 = time.monotonic()
        s.sendall(head)
        for c in chunks:
            s.sendall(c)
        data = b""
        while True:
            try:
                part = s.recv(65536)
            except ConnectionResetError:
                break
            if not part:
                break
            data += part
        return data, time.monotonic() - t0


def _status_and_json(raw: bytes) -> tuple[bytes, dict[bytes, bytes], Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = dict(tuple(p.strip().lower() for p in ln.split(b":", 1)) for ln in lines[1:])  # type: ignore[misc]
    return lines[0], headers, json.loads(body)


@pytest.fixture(scope="module")
def small_body() -> Iterator[Served]:
    yield from _serve(FakeEngine(), max_body_bytes=64 * 1024)


def test_body_over_the_limit_by_content_length_is_413_before_reading(small_body: Served) -> None:
    head = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
            b"content-length: 50000000\r\n\r\n")
    raw, _ = _raw_request(small_body.url, head, [b'{"prompt": "'])  # the 48 MB never come
    status, headers, body = _status_and_json(raw)
    assert status == b"HTTP/1.1 413 Request Entity Too Large" and headers[b"connection"] == b"close"
    assert body == {"error": {
        "message": "request body: 50000000 bytes is over this server's limit of 0.0625 MiB (65536 bytes); "
                   "send a smaller request or restart the server with a larger --max-body-mb",
        "type": "invalid_request_error", "param": None, "code": "request_too_large",
    }}


def test_chunked_body_is_counted_as_it_arrives(small_body: Served) -> None:
    head = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
            b"transfer-encoding: chunked\r\n\r\n")
    chunk = b"4000\r\n" + b"x" * 0x4000 + b"\r\n"  # 16 KiB
    # 80 KiB sent and the body never ends (no last chunk): the answer cannot wait for it
    raw, _ = _raw_request(small_body.url, head, [chunk] * 5)
    status, _, body = _status_and_json(raw)
    assert status == b"HTTP/1.1 413 Request Entity Too Large"
    assert body["error"]["message"] == ("request body: over this server's limit of 0.0625 MiB (65536 bytes); "
                                        "send a smaller request or restart the server with a larger --max-body-mb")
    # the server still serves everyone
    assert httpx.get(small_body.url + "/health").status_code == 200


def test_body_under_the_limit_reaches_the_endpoint(small_body: Served) -> None:
    r = httpx.post(small_body.url + "/v1/completions", json={"prompt": "x" * 60_000, "max_tokens": 1})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"


def test_limits_must_be_positive() -> None:
    with pytest.raises(ConfigError, match=r"^max_body_bytes: must be >= 1, got 0 \(--max-body-mb sets it in MiB\)$"):
        build_app(FakeEngine(), max_body_bytes=0)
    with pytest.raises(ConfigError, match=r"^--header-timeout-s: must be a finite number > 0 \(seconds\), got 0; the default is 10$"):
        BackgroundServer(build_app(FakeEngine()), header_timeout_s=0)


@pytest.fixture(params=["httptools", "h11"])
def head_timeout(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    """A server with a 0.5 s request-head timeout over each uvicorn HTTP implementation."""
    from charbench.engine.server import serving as server_mod

    if request.param == "h11":
        from uvicorn.protocols.http.h11_impl import H11Protocol as base
    else:
        pytest.importorskip("httptools")
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    monkeypatch.setattr(server_mod, "header_timeout_protocol", lambda t: header_timeout_protocol(t, base))
    app = build_app(FakeEngine(), manage_engine=True)
    with BackgroundServer(app, header_timeout_s=0.5) as srv:
        assert srv.server.config.http_protocol_class.__name__ == f"HeaderTimeout{base.__name__}"
        yield Served(app.state.charbench.engine, srv)


TIMEOUT_408 = {"error": {
    "message": "request head (request line and headers) not received within 0.5 s; send the whole head "
               "at once (the server's --header-timeout-s)",
    "type": "invalid_request_error", "param": None, "code": "request_timeout",
}}


def test_partial_request_line_gets_408_and_is_closed(head_timeout: Served) -> None:
    raw, took = _raw_request(head_timeout.url, b"GET /heal")
    status, headers, body = _status_and_json(raw)
    assert status == b"HTTP/1.1 408 Request Timeout" and headers[b"connection"] == b"close"
    assert body == TIMEOUT_408
    assert 0.4 < took < 3.0


def test_half_open_connections_do_not_stay(head_timeout: Served) -> None:
    import socket

    host, port = head_timeout.url.removeprefix("http://").split(":")
    socks = [socket.create_connection((host, int(port)), timeout=5) for _ in range(20)]
    try:
        for i, s in enumerate(socks):
            if i % 2:  # half send a partial request line, half nothing at all
                s.sendall(b"POST /v1/completions HT")
        t0 = time.monotonic()
        for s in socks:
            assert s.recv(65536).startswith(b"HTTP/1.1 408 Request Timeout")
        assert time.monotonic() - t0 < 3.0
        assert _wait_until(lambda: len(head_timeout.server.server.server_state.connections) == 0)
    finally:
        for s in socks:
            s.close()


def test_head_timeout_spares_complete_and_kept_alive_requests(head_timeout: Served) -> None:
    import socket

    host, port = head_timeout.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"GET /health HTTP/1.1\r\n")
        time.sleep(0.3)  # a slow but complete head, within the timeout
        s.sendall(b"Host: x\r\n\r\n")
        first = s.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 OK"), first
        time.sleep(0.7)  # idle after a response: the head timer is not running
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(65536).startswith(b"HTTP/1.1 200 OK")
        s.sendall(b"GET /hea")  # a second request that stalls mid-line
        t0 = time.monotonic()
        data = b""
        while part := s.recv(65536):
            data += part
        assert _status_and_json(data)[2] == TIMEOUT_408 and 0.4 < time.monotonic() - t0 < 3.0


def test_run_server_logs_random_weights_and_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    import charbench.engine.engine as engine_mod
    from charbench.engine.server import serving as server_mod
    from charbench.engine.api import EngineConfig

    class Engine(FakeEngine):
        weights_kind = "random"

        def __init__(self, cfg: EngineConfig) -> None:
            super().__init__()
            self.cfg = cfg

        def shutdown(self) -> None:  # type: ignore[override]
            pass

    seen: list[Any] = []

    class Stop:
        def run(self, sockets: Any = None) -> None:
            seen.append(self)

    class Collect(logging.Handler):
        def __init__(self) -> None:
            super().__init__()
            self.lines: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.lines.append(f"{record.levelname} {record.getMessage()}")

    def make_server(config: Any) -> Stop:
        seen.append(config)
        return Stop()

    handler = Collect()
    log = logging.getLogger("uvicorn.error")
    real_config = server_mod._uvicorn_config

    def config_then_listen(*args: Any) -> Any:
        config = real_config(*args)  # uvicorn's logging setup replaces the handlers: listen after it
        log.addHandler(handler)
        return config

    monkeypatch.setattr(engine_mod, "AsyncLLMEngine", Engine)
    monkeypatch.setattr(server_mod, "_make_uvicorn_server", make_server)
    monkeypatch.setattr(server_mod, "_uvicorn_config", config_then_listen)
    try:
        server_mod.run_server(EngineConfig(model="tiny"), port=0, log_level="info", max_body_mb=2, header_timeout_s=3)
    finally:
        log.removeHandler(handler)
    start = [ln for ln in handler.lines if "charbench serve: model" in ln]
    assert len(start) == 1 and start[0].endswith(
        "(max_model_len=128, max_queue=1024, weights=random, chat_template=fallback, max_body=2 MiB, header_timeout=3 s)")
    assert f"WARNING charbench serve: {RANDOM_WEIGHTS_WARNING}" in handler.lines
    config = seen[0]
    assert config.http.header_timeout_s == 3.0
    mw = [m for m in config.app.user_middleware if m.cls.__name__ == "BodyLimitMiddleware"]
    assert len(mw) == 1 and mw[0].kwargs == {"max_body_bytes": 2 * 1024 * 1024}
    with pytest.raises(ConfigError, match=r"^--max-body-mb: must be a finite number > 0 \(MiB\), got -1; the default is 16$"):
        server_mod.run_server(EngineConfig(model="tiny"), port=0, max_body_mb=-1)


# --------------------------------------------------------------------------- issue 16: sampling options, isolation

import logging  # noqa: E402

I64_MAX = 2**63 - 1


def _post_error(url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = httpx.post(url + path, json=body, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    return err


@pytest.mark.parametrize(
    ("extra", "param", "message"),
    [
        ({"top_k": 10**19}, "top_k",
         f"top_k: must be less than or equal to {I64_MAX} (the 64-bit limit) (got 10000000000000000000)"),
        ({"seed": 2**70}, "seed", f"seed: must be less than or equal to {I64_MAX} (the 64-bit limit) (got {2**70})"),
        ({"min_tokens": 2, "stop_token_ids": [10**9]}, "stop_token_ids",
         "stop_token_ids: token id 1000000000 is outside the vocabulary; ids must be in [0, 259)"),
        ({"min_p": 1.5}, "min_p", "min_p: must be greater than or equal to 0 and less than or equal to 1 (got 1.5)"),
        ({"repetition_penalty": 0}, "repetition_penalty", "repetition_penalty: must be greater than 0 (got 0.0)"),
        ({"presence_penalty": 2.5}, "presence_penalty",
         "presence_penalty: must be greater than or equal to -2 and less than or equal to 2 (got 2.5)"),
        ({"frequency_penalty": -3}, "frequency_penalty",
         "frequency_penalty: must be greater than or equal to -2 and less than or equal to 2 (got -3.0)"),
        ({"top_k": -5}, "top_k", "top_k: must be greater than or equal to -1 (got -5)"),
        ({"response_format": {"type": "json_object"}}, "response_format",
         'response_format: structured output is not supported; omit it or send {"type": "text"}'),
        ({"tool_choice": "auto"}, "tool_choice", 'tool_choice: tool calling is not supported; omit it or send "none"'),
        ({"parallel_tool_calls": False}, "parallel_tool_calls", "parallel_tool_calls: tool calling is not supported; omit it"),
        ({"top_logprobs": 2}, "top_logprobs", "top_logprobs: not supported; omit it or send 0"),
        ({"logprobs": True}, "logprobs", "logprobs: not supported; omit it or send false"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools",
         "tools: tool calling is not supported; omit it"),
        ({"guided_json": {"type": "object"}}, "guided_json", "guided_json: structured output is not supported; omit it"),
        ({"n": True}, "n", "n: only n=1 is supported; send one request per sample"),
        ({"logit_bias": {"5": 1.0}}, "logit_bias", "logit_bias: not supported; omit it or send {}"),
        ({"add_special_tokens": True}, "add_special_tokens", "add_special_tokens: not supported; omit it or send false"),
        ({"max_completion_tokens": 0}, "max_completion_tokens",
         "max_completion_tokens: must be greater than or equal to 1 (got 0)"),
        ({"stream_options": {"include_usage": True, "continuous_usage_stats": True}, "stream": True},
         "stream_options.continuous_usage_stats",
         "stream_options.continuous_usage_stats: not supported; omit it or send false"),
    ],
)
def test_chat_options_out_of_range_or_unsupported_400(fake: Served, extra: dict[str, Any], param: str, message: str) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **extra}
    err = _post_error(fake.url, "/v1/chat/completions", body)
    assert (err["param"], err["message"]) == (param, message)


def test_completion_only_options_400(fake: Served) -> None:
    err = _post_error(fake.url, "/v1/completions", {"prompt": "hi", "max_tokens": 4, "echo": True})
    assert (err["param"], err["message"]) == ("echo", "echo: not supported; omit it or send false")
    err = _post_error(fake.url, "/v1/completions", {"prompt": "hi", "max_tokens": 4, "add_special_tokens": False})
    assert (err["param"], err["message"]) == ("add_special_tokens", "add_special_tokens: not supported; omit it or send true")


def test_explicitly_default_options_are_accepted(fake: Served, caplog: pytest.LogCaptureFixture) -> None:
    body = {
        "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "response_format": {"type": "text"},
        "tool_choice": "none", "tools": [], "top_logprobs": 0, "logprobs": False, "n": 1, "user": "u1",
        "top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0, "presence_penalty": 0, "frequency_penalty": 0.0,
        "seed": -(2**63), "add_special_tokens": False, "skip_special_tokens": True, "a_field_nobody_knows": 1,
    }
    with caplog.at_level(logging.WARNING, logger="charbench.server"):
        r = httpx.post(fake.url + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == expected_text(3)
    assert "request fields ignored (unknown to this server): a_field_nobody_knows" in caplog.messages


def test_real_issue_requests_400_and_engine_keeps_serving(real: Served) -> None:
    url = real.url
    err = _post_error(url, "/v1/completions", {"prompt": "hi", "max_tokens": 4, "top_k": 10**19})
    assert err["param"] == "top_k"
    err = _post_error(url, "/v1/completions", {"prompt": "hi", "max_tokens": 4, "min_tokens": 2,
                                               "stop_token_ids": [10**9]})
    assert (err["param"], err["message"]) == (
        "stop_token_ids", "stop_token_ids: token id 1000000000 is outside the vocabulary; ids must be in [0, 258)")
    err = _post_error(url, "/v1/completions", {"prompt": "hi", "max_tokens": 4, "seed": 2**70})
    assert err["param"] == "seed" and "Overflow" not in err["message"]
    assert httpx.get(url + "/health").json()["status"] == "ok"
    r = httpx.post(url + "/v1/completions", json={"prompt": "hi", "max_tokens": 4, "ignore_eos": True, "top_k": 10**6,
                                                 "seed": 3})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4


def test_real_penalties_and_min_p_are_honoured(real: Served) -> None:
    def text(**kw: Any) -> str:
        body = {"prompt": "aaaa aaaa aaaa", "max_tokens": 24, "temperature": 0, "ignore_eos": True, **kw}
        r = httpx.post(real.url + "/v1/completions", json=body, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["text"]

    plain = text()
    assert text(repetition_penalty=1.0, presence_penalty=0.0, frequency_penalty=0.0, min_p=0.0) == plain
    for kw in ({"repetition_penalty": 4.0}, {"frequency_penalty": 2.0}, {"presence_penalty": 2.0}):
        assert text(**kw) != plain, kw
    # min_p=1 keeps only the most likely token: sampling at any temperature is greedy
    assert text(temperature=1.5, min_p=1.0, seed=1) == plain


FAIL_SEED = 4242


def _sse_events(client: httpx.AsyncClient, body: dict[str, Any]) -> Any:
    async def run() -> list[str]:
        async with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
            assert r.status_code == 200
            return (await r.aread()).decode().split("\n\n")

    return run()


def test_real_one_failing_request_does_not_stop_the_others(
    real: Served, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    sampler = real.engine.engine.sampler
    real_sample = sampler.sample

    def sample(logits: Any, rows: list[Any]) -> list[int]:
        # fails inside step() for one request only, after it streamed 3 tokens
        if any(r.params.seed == FAIL_SEED and r.num_output_tokens == 3 for r in rows):
            raise ValueError("injected failure")
        return real_sample(logits, rows)

    monkeypatch.setattr(sampler, "sample", sample)
    good = [{"prompt": f"stream {i} goes on", "max_tokens": 20 + i, "temperature": 0, "ignore_eos": True}
            for i in range(3)]
    bad = {"prompt": "this one fails", "max_tokens": 20, "temperature": 0.5, "seed": FAIL_SEED, "ignore_eos": True}

    async def main(with_bad: bool) -> list[list[str]]:
        async with httpx.AsyncClient(base_url=real.url, timeout=60) as client:
            bodies = good + ([bad] if with_bad else [])
            return await asyncio.gather(*(_sse_events(client, b) for b in bodies))

    def texts(streams: list[list[str]]) -> list[str]:
        return ["".join(json.loads(e[6:])["choices"][0]["text"] for e in s[:-2]) for s in streams]

    reference = asyncio.run(main(with_bad=False))
    with caplog.at_level(logging.ERROR, logger="charbench.engine"):
        got = asyncio.run(main(with_bad=True))
    assert texts(got[:3]) == texts(reference)
    for i, s in enumerate(got[:3]):
        assert s[-2:] == ["data: [DONE]", ""] and json.loads(s[-3][6:])["choices"][0]["finish_reason"] == "length"
        assert len(s) - 2 == 20 + i  # one event per token
    failed = got[3]
    assert failed[-2:] == ["data: [DONE]", ""] and len(failed) == 3 + 1 + 2
    rid = json.loads(failed[0][6:])["id"]
    err = json.loads(failed[-3][6:])["error"]
    assert err == {"message": f"request {rid} failed: ValueError while sampling: injected failure",
                   "type": "internal_error", "param": None, "code": "request_failed"}
    assert f"request {rid} failed while sampling: ValueError: injected failure" in caplog.messages
    # the same failure without streaming: a 500 for that request alone
    r = httpx.post(real.url + "/v1/completions", json=bad, timeout=60)
    assert r.status_code == 500 and r.json()["error"]["code"] == "request_failed"
    assert r.json()["error"]["message"].endswith("failed: ValueError while sampling: injected failure")
    assert httpx.get(real.url + "/health").status_code == 200
    eng = real.engine
    assert _wait_until(lambda: eng.stats().kv_blocks_used == 0 and eng.stats().num_running == 0, 10)
    rec = httpx.get(real.url + "/v1/charbench/records", params={"ids": rid}).json()["data"][0]
    assert (rec["finish_reason"], rec["output_tokens"]) == ("error", 3)
    monkeypatch.undo()
    r = httpx.post(real.url + "/v1/completions", json=good[0], timeout=60)
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == texts(reference)[0]


def test_chat_message_names_reach_the_template_or_are_refused(fake: Served) -> None:
    msgs = [ChatMessage(role="user", content="U", name="alice")]
    tmpl = "{% for m in messages %}[{{ m.role }}:{{ m.name }}]{{ m.content }}{% endfor %}"
    assert render_chat(msgs, tmpl) == "[user:alice]U"
    err = _post_error(fake.url, "/v1/chat/completions",
                      {"messages": [{"role": "user", "content": "hi", "name": "alice"}], "max_tokens": 2})
    assert (err["param"], err["message"]) == (
        "messages.0.name", "messages.0.name: the fallback chat template has no place for names; omit it")
