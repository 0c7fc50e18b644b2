"""Engine loop tests: LLMEngine and AsyncLLMEngine over a checking fake runner.

The fake runner stores every token it is given in a paged "KV cache" (token ids in
blocks, addressed through the block tables the scheduler passes) and derives logits from
the history it reads back, so wrong block tables, overwritten blocks or wrong start
positions change the output or fail an assertion.
"""

from __future__ import annotations

import asyncio
import random
import time
from types import SimpleNamespace

import pytest
import torch

from charbench.engine.api import EngineConfig, SamplingParams
from charbench.engine.chunking import FixedChunkPolicy
from charbench.engine.kv_cache import BlockAllocator
from charbench.engine.engine import (
    AsyncLLMEngine,
    EngineDeadError,
    LLMEngine,
    PromptTooLongError,
    QueueFullError,
    RequestFailedError,
)
from charbench.errors import ConfigError

CHARS = "abcdefghijklmnopqrstuvwxyz .,!?"  # ids 1.. ; 0 = BOS, 32 = EOS
BOS, EOS, VOCAB = 0, 32, 33


class FakeTokenizer:
    vocab_size = VOCAB
    bos_token_id = BOS
    eos_token_id = EOS

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        ids = [CHARS.index(c) + 1 for c in text]
        return [BOS] + ids if add_bos else ids

    def decode(self, ids: list[int]) -> str:
        return "".join(CHARS[i - 1] for i in ids if 1 <= i <= len(CHARS))




class FakeRunner:
    """Checks KV bookkeeping; logits are a pseudo-random function of the token history."""

    def __init__(self, num_blocks: int = 256, block_size: int = 4, context: int = 512) -> None:
        self.tokenizer = FakeTokenizer()
        self.model_config = SimpleNamespace(max_position_embeddings=context)
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.weights_kind = "fake"
        self.kv = [[-1] * block_size for _ in range(num_blocks)]
        self.ledger: dict[int, list[int]] = {}  # seq_id -> tokens it was given, in order
        self.batches: list[list[tuple[int, int, int, bool]]] = []
        self.closed = False

    def forward(self, chunks: list) -> torch.Tensor:
        bs = self.block_size
        self.batches.append([(c.seq_id, c.start_pos, len(c.token_ids), c.need_logits)
                             for c in chunks])
        rows = []
        for c in chunks:
            end = c.start_pos + len(c.token_ids)
            assert len(c.block_table) >= -(-end // bs), "block table too short"
            led = self.ledger.setdefault(c.seq_id, [])
            if c.start_pos == 0:
                led.clear()  # first prefill, or a recompute after preemption
            assert len(led) == c.start_pos, "start_pos does not follow the cached tokens"
            led.extend(c.token_ids)
            for pos in range(c.start_pos, end):
                self.kv[c.block_table[pos // bs]][pos % bs] = led[pos]
        for c in chunks:  # read back after all writes: shared blocks would show here
            end = c.start_pos + len(c.token_ids)
            hist = [self.kv[c.block_table[p // bs]][p % bs] for p in range(end)]
            assert hist == self.ledger[c.seq_id][:end], "KV cache corrupted"
            if c.need_logits:
                rows.append(self._logits(hist))
        return torch.stack(rows) if rows else torch.empty(0, VOCAB)

    @staticmethod
    def _logits(hist: list[int]) -> torch.Tensor:
        h = 17
        for t in hist:
            h = (h * 1000003 + t + 1) % (2**31 - 1)
        g = torch.Generator().manual_seed(h)
        x = torch.randn(VOCAB, generator=g) * 3
        x[EOS] -= 4.0  # EOS rare but possible
        return x

    def shutdown(self) -> None:
        self.closed = True


def make_engine(num_blocks: int = 256, block_size: int = 4, chunk: int | None = None,
                **cfg_kw) -> LLMEngine:
    cfg = EngineConfig(**{"max_num_seqs": 16, "max_num_batched_tokens": 64, **cfg_kw})
    runner = FakeRunner(num_blocks, block_size)
    return LLMEngine(cfg, runner=runner, allocator=BlockAllocator(num_blocks),
                     chunk_policy=FixedChunkPolicy(chunk) if chunk else None)


def run_all(engine: LLMEngine, max_steps: int = 10_000) -> dict[str, list]:
    outs: dict[str, list] = {}
    for _ in range(max_steps):
        if not engine.has_unfinished():
            break
        for o in engine.step():
            outs.setdefault(o.request_id, []).append(o)
    assert not engine.has_unfinished()
    return outs


def prompts(n: int, seed: int = 0, lo: int = 3, hi: int = 40) -> list[list[int]]:
    rng = random.Random(seed)
    return [[BOS] + [rng.randrange(1, 32) for _ in range(rng.randint(lo, hi))] for _ in range(n)]


def greedy_outputs(engine: LLMEngine, ps: list[list[int]], max_tokens: int = 24,
                   **kw) -> dict[str, list[int]]:
    for i, p in enumerate(ps):
        engine.add_request(f"r{i}", p, SamplingParams(max_tokens=max_tokens, **kw))
    outs = run_all(engine)
    return {rid: o[-1].token_ids for rid, o in outs.items()}


# ---- LLMEngine ----------------------------------------------------------------------------


def test_generate_streams_consistent_outputs() -> None:
    eng = make_engine()
    eng.add_request("a", "hello world", SamplingParams(max_tokens=12))
    eng.add_request("b", [BOS, 5, 6, 7], SamplingParams(max_tokens=5, ignore_eos=True))
    outs = run_all(eng)
    assert set(outs) == {"a", "b"}
    for rid, lst in outs.items():
        final = lst[-1]
        assert final.finished and all(not o.finished for o in lst[:-1])
        assert "".join(o.new_text for o in lst) == final.text
        assert [t for o in lst for t in o.new_token_ids] == final.token_ids
        assert final.record.output_tokens == len(final.token_ids) == len(lst)
        assert final.finish_reason in ("stop", "length")
    assert outs["b"][-1].finish_reason == "length" and len(outs["b"][-1].token_ids) == 5
    assert eng.allocator.num_free == eng.allocator.num_blocks
    st = eng.stats()
    assert st.requests_finished_total == 2 and st.num_running == st.num_waiting == 0
    assert st.prompt_tokens_total == 12 + 4
    assert st.generation_tokens_total == sum(len(v) for v in outs.values())


@pytest.mark.parametrize("chunk", [1, 3, 7, 16])
def test_chunked_prefill_matches_one_shot(chunk: int) -> None:
    ps = prompts(6, seed=1, lo=10, hi=50)
    ref = greedy_outputs(make_engine(max_num_batched_tokens=256), ps, ignore_eos=True)
    got = greedy_outputs(make_engine(chunk=chunk), ps, ignore_eos=True)
    assert got == ref
    assert all(len(v) == 24 for v in ref.values())


def test_one_shot_reference_is_really_one_shot_and_chunks_are_small() -> None:
    eng = make_engine(max_num_batched_tokens=256)
    greedy_outputs(eng, prompts(2, seed=1, lo=30, hi=40))
    assert eng.runner.batches[0][0][2] >= 31  # whole prompt in one chunk
    eng = make_engine(chunk=3)
    greedy_outputs(eng, prompts(2, seed=1, lo=30, hi=40))
    assert max(n for b in eng.runner.batches for (_, _, n, _) in b) == 3


def test_output_independent_of_batch_composition() -> None:
    ps = prompts(8, seed=2)
    alone = greedy_outputs(make_engine(), ps[:1], max_tokens=32)["r0"]
    together = greedy_outputs(make_engine(), ps, max_tokens=32)["r0"]
    assert alone == together


def test_preemption_recompute_gives_identical_outputs() -> None:
    ps = prompts(6, seed=3, lo=6, hi=10)
    ref = greedy_outputs(make_engine(), ps, max_tokens=30, ignore_eos=True)
    # 14 blocks x 4 tokens = 56 tokens of KV for 6 sequences that grow to ~40 tokens each
    eng = make_engine(num_blocks=14, max_model_len=56)
    got = greedy_outputs(eng, ps, max_tokens=30, ignore_eos=True)
    assert got == ref
    st = eng.stats()
    assert st.preemptions_total > 0
    assert sum(eng.get_record(f"r{i}").preemptions for i in range(6)) == st.preemptions_total
    assert eng.allocator.num_free == 14


def test_abort_frees_blocks_and_returns_final_output() -> None:
    eng = make_engine()
    eng.add_request("a", [BOS] + [3] * 20, SamplingParams(max_tokens=50, ignore_eos=True))
    eng.add_request("b", [BOS] + [4] * 20, SamplingParams(max_tokens=50, ignore_eos=True))
    eng.add_request("c", [BOS, 1], SamplingParams(max_tokens=50))
    for _ in range(3):
        eng.step()
    used = eng.allocator.num_blocks - eng.allocator.num_free
    out = eng.abort("a")
    assert out is not None and out.finished and out.finish_reason == "abort"
    assert len(out.token_ids) == 3 and out.record.finish_reason == "abort"
    assert eng.allocator.num_blocks - eng.allocator.num_free == used - 6  # 24 tokens / 4
    assert eng.abort("a") is None and eng.abort("nope") is None
    rest = run_all(eng)
    assert "a" not in rest and rest["b"][-1].finish_reason == "length"
    assert eng.allocator.num_free == eng.allocator.num_blocks
    # abort of a request that is still waiting
    eng.add_request("w", [BOS, 1, 2], SamplingParams())
    out = eng.abort("w")
    assert out.finish_reason == "abort" and out.token_ids == [] and not eng.has_unfinished()
    assert eng.get_record("w").first_scheduled_time_s is None


def test_records_timestamps_and_latency_arithmetic() -> None:
    eng = make_engine()
    eng.add_request("x", [BOS, 1, 2, 3], SamplingParams(max_tokens=6, ignore_eos=True))
    outs = run_all(eng)["x"]
    r = eng.get_record("x")
    assert r is outs[-1].record
    seq = [r.arrival_time_s, r.first_scheduled_time_s, r.first_token_time_s,
           *r.token_times_s, r.finish_time_s]
    assert all(a <= b for a, b in zip(seq, seq[1:]))
    assert r.token_times_s[0] == r.first_token_time_s and r.token_times_s[-1] == r.finish_time_s
    assert r.output_tokens == 6 and r.prompt_tokens == 4 and r.finish_reason == "length"
    assert r.ttft_ms == pytest.approx((r.first_token_time_s - r.arrival_time_s) * 1e3)
    assert r.e2el_ms == pytest.approx((r.finish_time_s - r.arrival_time_s) * 1e3)
    assert r.tpot_ms == pytest.approx((r.e2el_ms - r.ttft_ms) / 5)
    assert len(r.itl_ms) == 5
    assert sum(r.itl_ms) == pytest.approx((r.token_times_s[-1] - r.token_times_s[0]) * 1e3)
    assert r.tpot_ms == pytest.approx(sum(r.itl_ms) / 5)
    # explicit arrival time
    eng.add_request("y", [BOS, 1], SamplingParams(max_tokens=2), arrival_time_s=1.0)
    run_all(eng)
    assert eng.get_record("y").arrival_time_s == 1.0


def test_prompt_too_long_duplicate_id_and_bad_tokens() -> None:
    eng = make_engine(max_model_len=32)
    eng.add_request("ok", [BOS] * 31, SamplingParams(max_tokens=4))
    with pytest.raises(PromptTooLongError, match=r"32 tokens.*max_model_len=32") as ei:
        eng.add_request("long", [BOS] * 32, SamplingParams())
    assert isinstance(ei.value, ConfigError)
    with pytest.raises(ValueError, match="already in use"):
        eng.add_request("ok", [BOS], SamplingParams())
    with pytest.raises(ValueError, match="token ids"):
        eng.add_request("bad", [BOS, 99], SamplingParams())
    with pytest.raises(ValueError, match="max_tokens"):
        eng.add_request("bad", [BOS], SamplingParams(max_tokens=0))
    out = run_all(eng)["ok"][-1]
    # only one token fits: 31 prompt tokens + 1 = max_model_len
    assert out.finish_reason in ("length", "stop") and len(out.token_ids) == 1
    eng.add_request("ok", [BOS], SamplingParams(max_tokens=1))  # finished ids can be reused


def test_max_model_len_config_errors() -> None:
    with pytest.raises(ConfigError, match="KV cache"):
        make_engine(num_blocks=4, max_model_len=17)
    with pytest.raises(ConfigError, match="context length"):
        make_engine(num_blocks=1000, max_model_len=600)
    assert make_engine(num_blocks=8).max_model_len == 32  # capacity-limited default
    assert make_engine(num_blocks=1000).max_model_len == 512  # context-limited default


def test_stop_strings_and_seeded_sampling_through_engine() -> None:
    eng = make_engine()
    eng.add_request("s", "ab", SamplingParams(max_tokens=40, temperature=0.9, seed=7))
    eng.add_request("t", "ab", SamplingParams(max_tokens=40, temperature=0.9, seed=7))
    outs = run_all(eng)
    assert outs["s"][-1].token_ids == outs["t"][-1].token_ids  # same seed, same batch
    text = outs["s"][-1].text
    assert len(text) >= 4
    stop = text[2:4]
    eng.add_request("u", "ab", SamplingParams(max_tokens=40, temperature=0.9, seed=7, stop=[stop]))
    eng.add_request("v", "zz", SamplingParams(max_tokens=40, temperature=0.9, seed=3))
    outs = run_all(eng)
    u = outs["u"][-1]
    assert u.finish_reason == "stop" and stop not in u.text
    assert text.startswith(u.text) and len(u.text) == text.index(stop)
    assert "".join(o.new_text for o in outs["u"]) == u.text


def test_min_tokens_and_ignore_eos_force_lengths() -> None:
    eng = make_engine()
    for i, p in enumerate(prompts(8, seed=5)):
        eng.add_request(f"m{i}", p, SamplingParams(max_tokens=40, min_tokens=40))
        eng.add_request(f"i{i}", p, SamplingParams(max_tokens=40, ignore_eos=True))
    outs = run_all(eng)
    for rid, lst in outs.items():
        assert len(lst[-1].token_ids) == 40 and lst[-1].finish_reason == "length"
        if rid.startswith("m"):
            assert EOS not in lst[-1].token_ids
    assert any(EOS in lst[-1].token_ids for rid, lst in outs.items() if rid.startswith("i"))


def test_shutdown_releases_runner() -> None:
    eng = make_engine()
    eng.shutdown()
    assert eng.runner.closed
    with pytest.raises(EngineDeadError):
        eng.add_request("a", [BOS], SamplingParams())


# ---- AsyncLLMEngine -----------------------------------------------------------------------


def make_async(delay_s: float = 0.0, **kw) -> AsyncLLMEngine:
    eng = make_engine(**kw)
    if delay_s:
        fwd = eng.runner.forward

        def slow_forward(chunks):  # keeps long requests alive while the test acts
            time.sleep(delay_s)
            return fwd(chunks)

        eng.runner.forward = slow_forward
    a = AsyncLLMEngine(eng.cfg, engine=eng)
    a.start()
    return a


def test_async_generate_concurrent_streams_match_sync() -> None:
    ps = prompts(5, seed=4)
    ref = greedy_outputs(make_engine(), ps, max_tokens=20)
    aeng = make_async()

    async def one(i: int) -> list:
        return [o async for o in aeng.generate(ps[i], SamplingParams(max_tokens=20), f"r{i}")]

    async def main() -> list:
        return await asyncio.gather(*(one(i) for i in range(5)))

    try:
        results = asyncio.run(main())
    finally:
        aeng.shutdown()
    for i, outs in enumerate(results):
        assert outs[-1].finished and outs[-1].token_ids == ref[f"r{i}"]
        assert sum(len(o.new_token_ids) for o in outs) == len(ref[f"r{i}"])
    assert aeng.stats().requests_finished_total == 5
    assert aeng.get_record("r0").finish_time_s is not None


def test_async_cancel_aborts_and_frees_blocks() -> None:
    aeng = make_async(delay_s=0.002)
    eng = aeng.engine

    async def main() -> None:
        gen = aeng.generate([BOS] + [3] * 30, SamplingParams(max_tokens=400, ignore_eos=True), "c")
        n = 0
        async for _ in gen:
            n += 1
            if n == 3:
                break
        await gen.aclose()  # what a server does when the client disconnects
        # task cancellation path
        async def consume() -> None:
            async for _ in aeng.generate([BOS, 4, 4], SamplingParams(max_tokens=400,
                                                                      ignore_eos=True), "d"):
                pass
        task = asyncio.create_task(consume())
        while eng.get_record("d") is None or not eng.get_record("d").token_times_s:
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(2000):
            if not eng.has_unfinished() and eng.allocator.num_free == eng.allocator.num_blocks:
                break
            await asyncio.sleep(0.005)

    try:
        asyncio.run(main())
        assert eng.allocator.num_free == eng.allocator.num_blocks
        assert eng.get_record("c").finish_reason == "abort"
        assert eng.get_record("d").finish_reason == "abort"
        assert eng.get_record("c").output_tokens < 400
    finally:
        aeng.shutdown()


def test_async_errors_queue_full_and_external_abort() -> None:
    aeng = make_async(delay_s=0.002, max_queue=0)  # 400 tokens take >= 0.8 s

    async def first(gen):
        return await gen.__anext__()

    async def main() -> None:
        with pytest.raises(QueueFullError):
            await first(aeng.generate([BOS], SamplingParams(), "q"))
        aeng.cfg.max_queue = 100
        with pytest.raises(PromptTooLongError):
            await first(aeng.generate([BOS] * 600, SamplingParams(), "l"))
        gen = aeng.generate([BOS, 1], SamplingParams(max_tokens=400, ignore_eos=True), "x")
        await gen.__anext__()
        aeng.abort("x")
        outs = [o async for o in gen]
        assert outs[-1].finish_reason == "abort" and len(outs[-1].token_ids) < 400

    try:
        asyncio.run(main())
    finally:
        aeng.shutdown()


def test_async_forward_failure_fails_the_batch_and_the_engine_goes_on() -> None:
    aeng = make_async()
    fwd = aeng.engine.runner.forward

    def boom(chunks):
        raise RuntimeError("device lost")

    aeng.engine.runner.forward = boom

    async def main() -> list:
        with pytest.raises(RequestFailedError,
                           match="^request e failed: RuntimeError while running the batch's model forward: "
                                 "device lost$"):
            async for _ in aeng.generate([BOS, 1], SamplingParams(), "e"):
                pass
        assert aeng.is_running
        aeng.engine.runner.forward = fwd
        return [o async for o in aeng.generate([BOS, 1], SamplingParams(max_tokens=5, ignore_eos=True), "f")]

    try:
        outs = asyncio.run(main())
        assert outs[-1].finish_reason == "length" and len(outs[-1].token_ids) == 5
        assert aeng.get_record("e").finish_reason == "error"
        eng = aeng.engine
        assert eng.allocator.num_free == eng.allocator.num_blocks
    finally:
        aeng.shutdown()
    assert aeng.engine.runner.closed


def test_async_loop_bug_kills_the_engine_and_fails_open_streams() -> None:
    aeng = make_async()

    def boom():
        raise RuntimeError("stats broke")

    aeng.engine.stats = boom  # outside step(): the loop itself fails

    async def main() -> None:
        with pytest.raises(EngineDeadError, match="stats broke"):
            async for _ in aeng.generate([BOS, 1], SamplingParams(), "e"):
                pass
        with pytest.raises(EngineDeadError):
            await aeng.generate([BOS, 1], SamplingParams(), "f").__anext__()

    try:
        asyncio.run(main())
        assert not aeng.is_running
    finally:
        aeng.shutdown()


# ---- one request never stops the engine (issue 16) ----------------------------------------

ISO_PROMPTS = prompts(4, seed=11)


def _iso_engine() -> LLMEngine:
    eng = make_engine()
    for i, p in enumerate(ISO_PROMPTS):
        eng.add_request(f"r{i}", p, SamplingParams(max_tokens=12, ignore_eos=True))
    return eng


def _without(rid: str) -> dict[str, list[int]]:
    """Token ids of the other requests when ``rid`` is not sent at all."""
    eng = make_engine()
    for i, p in enumerate(ISO_PROMPTS):
        if f"r{i}" != rid:
            eng.add_request(f"r{i}", p, SamplingParams(max_tokens=12, ignore_eos=True))
    return {k: v[-1].token_ids for k, v in run_all(eng).items()}


def _check_isolated(eng: LLMEngine, outs: dict[str, list], rid: str, stage: str, exc: str, msg: str,
                    caplog: pytest.LogCaptureFixture) -> None:
    last = outs[rid][-1]
    assert (last.finished, last.finish_reason, last.error) == (True, "error", f"{exc} while {stage}: {msg}")
    assert eng.get_record(rid).finish_reason == "error"
    others = {k: v[-1].token_ids for k, v in outs.items() if k != rid}
    assert others == _without(rid)
    assert all(outs[k][-1].finish_reason == "length" for k in others)
    assert eng.allocator.num_free == eng.allocator.num_blocks  # its blocks were freed too
    logged = [r for r in caplog.records if r.name == "charbench.engine" and r.levelname == "ERROR"]
    assert [r.getMessage() for r in logged] == [f"request {rid} failed while {stage}: {exc}: {msg}"]


def test_detokenizer_failure_fails_one_request(caplog: pytest.LogCaptureFixture) -> None:
    eng = _iso_engine()
    stop = eng._requests["r2"].stop
    real_add = stop.add_token

    def add_token(tok: int) -> str:
        if stop.num_output_tokens == 3:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
        return real_add(tok)

    stop.add_token = add_token
    outs = run_all(eng)
    _check_isolated(eng, outs, "r2", "detokenizing", "UnicodeDecodeError",
                    "'utf-8' codec can't decode byte 0xff in position 0: invalid start byte", caplog)
    assert len(outs["r2"][-1].token_ids) == 4  # three good tokens, then the failing one


def test_sampler_failure_fails_one_request(caplog: pytest.LogCaptureFixture) -> None:
    eng = _iso_engine()
    # the issue's crash, slipped past validation: min_tokens with an id outside the vocabulary
    p = eng._requests["r1"].params
    p.min_tokens, p.stop_token_ids = 5, [10**9]
    outs = run_all(eng)
    _check_isolated(eng, outs, "r1", "sampling", "IndexError",
                    "index 1000000000 is out of bounds for dimension 0 with size 33", caplog)
    assert outs["r1"][-1].token_ids == []


def test_scheduler_failure_fails_held_requests_and_engine_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    eng = _iso_engine()
    real = eng.scheduler.schedule
    calls = []

    def schedule():
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("scheduler bug")
        return real()

    eng.scheduler.schedule = schedule
    outs = run_all(eng)
    assert {k: (v[-1].finish_reason, v[-1].error) for k, v in outs.items()} == {
        f"r{i}": ("error", "RuntimeError while scheduling: scheduler bug") for i in range(4)}
    assert eng.allocator.num_free == eng.allocator.num_blocks
    assert len([r for r in caplog.records if r.levelname == "ERROR"]) == 4
    eng.add_request("after", ISO_PROMPTS[0], SamplingParams(max_tokens=12, ignore_eos=True))
    assert run_all(eng)["after"][-1].token_ids == _without("r1")["r0"]


def test_the_issues_requests_are_refused_in_process() -> None:
    eng = make_engine()
    with pytest.raises(ValueError, match=r"^top_k: must be less than or equal to 9223372036854775807 "
                                         r"\(the 64-bit limit\) \(got 10000000000000000000\)$"):
        eng.add_request("a", [BOS, 1], SamplingParams(max_tokens=4, top_k=10**19))
    with pytest.raises(ValueError, match=r"^stop_token_ids: token id 1000000000 is outside the vocabulary; "
                                         r"ids must be in \[0, 33\)$"):
        eng.add_request("b", [BOS, 1], SamplingParams(max_tokens=4, min_tokens=2, stop_token_ids=[10**9]))
    with pytest.raises(ValueError, match=r"^seed: must be less than or equal to 9223372036854775807"):
        eng.add_request("c", [BOS, 1], SamplingParams(max_tokens=4, seed=2**70))
    assert not eng.has_unfinished()
    # a top_k above the vocabulary is the whole vocabulary
    eng.add_request("k", [BOS, 1], SamplingParams(max_tokens=8, temperature=1.0, top_k=10**18, seed=5))
    eng.add_request("z", [BOS, 1], SamplingParams(max_tokens=8, temperature=1.0, top_k=0, seed=5))
    outs = run_all(eng)
    assert outs["k"][-1].token_ids == outs["z"][-1].token_ids


def test_penalties_change_greedy_outputs_through_engine() -> None:
    ps = prompts(3, seed=12)
    plain = greedy_outputs(make_engine(), ps, max_tokens=30, ignore_eos=True)
    rep = greedy_outputs(make_engine(), ps, max_tokens=30, ignore_eos=True, repetition_penalty=3.0)
    freq = greedy_outputs(make_engine(), ps, max_tokens=30, ignore_eos=True, frequency_penalty=2.0)
    for rid in plain:
        assert rep[rid] != plain[rid] and freq[rid] != plain[rid]
        # a strong frequency penalty spreads the output over more distinct tokens
        assert len(set(freq[rid])) > len(set(plain[rid]))


# ---- the real tiny model ------------------------------------------------------------------

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[
        pytest.mark.gpu,
        pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]),
]


def tiny_engine(chunk: int | None = None, **cfg_kw) -> LLMEngine:
    cfg = EngineConfig(**{"model": "tiny", "max_num_seqs": 16, "max_num_batched_tokens": 256,
                          "kv_cache_gb": 0.05, **cfg_kw})
    return LLMEngine(cfg, chunk_policy=FixedChunkPolicy(chunk) if chunk else None)


def tiny_prompts(n: int, seed: int, lo: int, hi: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[256] + [rng.randrange(0, 256) for _ in range(rng.randint(lo, hi))] for _ in range(n)]


@pytest.fixture
def exact_matmul():
    """No TF32 on GPU: greedy comparisons need fp32 matmuls."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


@pytest.mark.parametrize("device", DEVICES)
def test_tiny_model_chunked_prefill_and_batch_composition(device: str, exact_matmul) -> None:
    ps = tiny_prompts(8, seed=7, lo=20, hi=90)
    one_shot = greedy_outputs(tiny_engine(device=device), ps, max_tokens=16, ignore_eos=True)
    for chunk in (5, 32):
        eng = tiny_engine(chunk=chunk, device=device)
        assert greedy_outputs(eng, ps, max_tokens=16, ignore_eos=True) == one_shot
        assert eng.stats().preemptions_total == 0
    alone = greedy_outputs(tiny_engine(device=device), ps[:1], max_tokens=16,
                           ignore_eos=True)["r0"]
    assert alone == one_shot["r0"]


@pytest.mark.parametrize("device", DEVICES)
def test_tiny_model_preemption_recompute_identical(device: str, exact_matmul) -> None:
    ps = tiny_prompts(6, seed=8, lo=10, hi=30)
    ref = greedy_outputs(tiny_engine(device=device), ps, max_tokens=40, ignore_eos=True)
    per_block = 2 * 4 * 4 * 32 * 4 * 16  # K+V * layers * kv_heads * head_dim * fp32 * block
    eng = tiny_engine(kv_cache_gb=8 * per_block / 2**30, max_model_len=128, device=device)
    assert eng.allocator.num_blocks == 8
    got = greedy_outputs(eng, ps, max_tokens=40, ignore_eos=True)
    assert got == ref
    assert eng.stats().preemptions_total > 0
    assert eng.allocator.num_free == 8


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_tiny_model_cuda_sampling_and_async() -> None:
    """Seeded sampling with top-k/top-p on CUDA logits is reproducible and batch-independent;
    the async engine streams from a CUDA engine."""
    ps = tiny_prompts(8, seed=9, lo=5, hi=40)
    sp = dict(max_tokens=24, temperature=0.8, top_k=50, top_p=0.9, seed=123, ignore_eos=True)
    eng = tiny_engine(device="cuda")
    eng.add_request("a", ps[0], SamplingParams(**sp))
    alone = run_all(eng)["a"][-1].token_ids
    eng.add_request("a", ps[0], SamplingParams(**sp))
    for i, p in enumerate(ps[1:]):
        eng.add_request(f"o{i}", p, SamplingParams(max_tokens=30, temperature=1.0, top_p=0.5))
    assert run_all(eng)["a"][-1].token_ids == alone
    aeng = AsyncLLMEngine(eng.cfg, engine=eng)
    aeng.start()

    async def main() -> list:
        return [o async for o in aeng.generate(ps[0], SamplingParams(**sp), "z")]

    try:
        outs = asyncio.run(main())
    finally:
        aeng.shutdown()
    assert outs[-1].token_ids == alone and outs[-1].finished
