"""HTTP target against a raw loopback SSE server; SSE parsing; errors are counted, not raised."""

from __future__ import annotations

import asyncio
import socket

import pytest

from charbench.errors import ConfigError, DeviceError
from charbench.workloads.serving.client import HttpTarget, NoHooks, SseParser, normalize_base_url
from charbench.workloads.serving.loadgen import LoadPlan, WorkItem, run_load
from charbench.workloads.serving.metrics import ClientRecord

from .fakes import LoopbackSSE


def test_sse_parser_handles_split_events_and_crlf() -> None:
    p = SseParser()
    assert p.feed(b'data: {"a":') == []
    assert p.feed(b'1}\n\ndata: x\r\n\r\n: comment\n\ndata: [DO') == ['{"a":1}', "x"]
    assert p.feed(b"NE]\n\n") == ["[DONE]"]
    assert p.feed(b"data: l1\ndata: l2\n\n") == ["l1\nl2"]


def test_normalize_base_url() -> None:
    assert normalize_base_url("http://127.0.0.1:8000/v1/completions") == "http://127.0.0.1:8000"
    assert normalize_base_url("http://h:1/v1/") == "http://h:1"
    with pytest.raises(ConfigError, match="--target"):
        normalize_base_url("127.0.0.1:8000")


def _send(target: HttpTarget, n: int = 3, out: int = 2, prompt=None) -> list[ClientRecord]:  # type: ignore[no-untyped-def]
    items = [WorkItem(i, prompt if prompt is not None else [5, 6, 7], 3, 3, out, 0.0) for i in range(n)]

    async def go() -> list[ClientRecord]:
        async with target.session():
            res = await run_load(target, LoadPlan(items))
            await target.server_records(res.records)
            return res.records

    return asyncio.run(go())


def test_streaming_tokens_usage_and_server_records() -> None:
    with LoopbackSSE(tokens=4) as srv:
        t = HttpTarget(srv.url + "/v1", timeout_s=5)
        t.probe()
        assert t.model == "fake-model" and t.max_model_len == 2048 and t.local
        recs = _send(t, n=3, out=4)
        body = srv.bodies[0]
    for r in recs:
        assert r.ok and r.output_tokens == 4 and r.output_tokens_source == "usage"
        assert len(r.token_times_s) == 4 and r.prompt_tokens == 5
        assert r.server_id and r.server and r.server["ttft_ms"] == 1.0 and r.server["queue_ms"] == pytest.approx(0.5)
        assert r.ttft_ms is not None and r.ttft_ms >= 0
    assert body["stream"] and body["stream_options"] == {"include_usage": True}
    assert body["ignore_eos"] is True and body["min_tokens"] == 4 and body["max_tokens"] == 4
    assert body["prompt"] == [5, 6, 7] and body["model"] == "fake-model"


def test_chat_payload_and_unforced_lengths() -> None:
    with LoopbackSSE(tokens=2) as srv:
        t = HttpTarget(srv.url, api="chat", model="m", force_output_len=False, timeout_s=5)
        t._client = None
        p = t.payload("hello", 7)
    assert p["messages"] == [{"role": "user", "content": "hello"}] and p["max_completion_tokens"] == 7
    assert "ignore_eos" not in p and "min_tokens" not in p


def test_chat_stream_skips_the_role_chunk() -> None:
    with LoopbackSSE(tokens=3, chat=True) as srv:
        t = HttpTarget(srv.url, api="chat", model="m", timeout_s=5)
        recs = _send(t, n=2, out=3, prompt="hello there")
        body = srv.bodies[0]
    assert srv_path_ok(body)
    for r in recs:
        assert r.ok and r.output_tokens == 3 and len(r.token_times_s) == 3


def srv_path_ok(body: dict) -> bool:
    return body["messages"][0]["content"] == "hello there" and body["max_completion_tokens"] == 3


def test_http_error_status_is_counted() -> None:
    with LoopbackSSE(status=429) as srv:
        t = HttpTarget(srv.url, model="m", timeout_s=5)
        recs = _send(t, n=2)
    assert all(not r.ok and r.error and r.error.startswith("HTTP 429: overloaded") for r in recs)


def test_stream_without_done_and_without_usage() -> None:
    with LoopbackSSE(tokens=3, drop_done=True, usage=False, records=False) as srv:
        t = HttpTarget(srv.url, model="m", timeout_s=5)
        recs = _send(t, n=1, out=3)
        assert t.records_supported is False
    r = recs[0]
    assert r.error == "stream ended without [DONE]" and r.output_tokens == 3 and r.output_tokens_source == "events"


def test_dead_target_errors_are_records_not_exceptions() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    t = HttpTarget(f"http://127.0.0.1:{port}", model="m", timeout_s=2)
    recs = _send(t, n=2)
    assert all(r.error and "Connect" in r.error for r in recs)
    with pytest.raises(DeviceError, match="no answer"):
        t.probe(timeout_s=1)


def test_timeouts_are_counted() -> None:
    async def slow_server() -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            await asyncio.sleep(5)
            writer.close()

        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        t = HttpTarget(f"http://127.0.0.1:{port}", model="m", timeout_s=0.3)
        async with t.session():
            res = await run_load(t, LoadPlan([WorkItem(0, "hi", 1, 1, 2, 0.0)]))
        srv.close()
        r = res.records[0]
        assert r.timed_out and "timed out" in (r.error or "")

    asyncio.run(slow_server())


def test_remote_target_is_not_local() -> None:
    assert not HttpTarget("http://10.1.2.3:8000").local
    assert HttpTarget("http://localhost:8000").local


def test_send_outside_session_is_a_bug_not_silence() -> None:
    t = HttpTarget("http://127.0.0.1:9", model="m")
    r = ClientRecord(0, "x", 1, 1)
    with pytest.raises(RuntimeError, match="session"):
        asyncio.run(t.send(r, "p", NoHooks()))
