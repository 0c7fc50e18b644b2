"""TP x SPP x KVP ranks (gloo, spawned processes) reproduce the single-rank engine exactly."""

from __future__ import annotations

import pytest
import torch

from charbench.engine.api import EngineConfig
from charbench.engine.lc_runner import GenerateSpec, launch
from charbench.engine.parallel import Layout
from charbench.engine.runner import ModelRunner, SeqChunk
from charbench.errors import ConfigError

PROMPT = torch.randint(0, 256, (300,), generator=torch.Generator().manual_seed(1)).tolist()
NEW = 5


SHORTS = [list(range(5, 25)), list(range(40, 47))]  # short requests decoding during the long prefill
SHORT_NEW = 6


def _greedy(runner: ModelRunner, seq_id: int, prompt: list[int], new: int) -> tuple[list[int], torch.Tensor]:
    """Greedy tokens and logits of the single-rank engine runner (one-shot prefill)."""
    table = list(range(seq_id * 64, seq_id * 64 + -(-(len(prompt) + new) // 16)))
    logits = [runner.forward([SeqChunk(seq_id, prompt, 0, table, True)])[0]]
    out, pos = [int(logits[-1].argmax())], len(prompt)
    while len(out) < new:
        logits.append(runner.forward([SeqChunk(seq_id, [out[-1]], pos, table, True)])[0])
        out.append(int(logits[-1].argmax()))
        pos += 1
    return out, torch.stack(logits)


@pytest.fixture(scope="module")
def reference() -> tuple[list[int], torch.Tensor, list[list[int]]]:
    """The single-rank engine runner's greedy output for the long prompt and the shorts."""
    runner = ModelRunner(EngineConfig(model="tiny", seed=0, dtype="fp32", kv_cache_gb=0.05))
    out, logits = _greedy(runner, 0, PROMPT, NEW)
    shorts = [_greedy(runner, 1 + i, p, SHORT_NEW)[0] for i, p in enumerate(SHORTS)]
    runner.shutdown()
    return out, logits, shorts


@pytest.mark.parametrize("layout,per_rank,kv_tokens,mixed", [
    # 300 + 4 fed-back tokens; 160 per rank: chunk 2 straddles the shard boundary, decodes grow rank 1
    ("kvp=2", 160, [160, 144], False),
    # the shorts (20 + 5 and 7 + 5 fed-back tokens) decode in the long prompt's micro-batches
    ("spp=2", 400, [341, 341], True),
    ("tp=2xspp=2xkvp=2", 160, [197, 197, 144, 144, 197, 197, 144, 144], True),
])
def test_parallel_layout_equals_single_rank(reference, layout, per_rank, kv_tokens, mixed):
    ref_tokens, ref_logits, ref_shorts = reference
    spec = GenerateSpec("tiny", PROMPT, [128, 128, 44], NEW, per_rank,
                        co_prompts=SHORTS if mixed else [], co_new_tokens=SHORT_NEW if mixed else 0)
    res = launch(Layout.parse(layout), spec)
    assert res.tokens == ref_tokens
    torch.testing.assert_close(res.logits, ref_logits, atol=1e-4, rtol=1e-4)
    assert res.kv_tokens_per_rank == kv_tokens
    assert len(res.tbt_s) == NEW - 1 and res.ttft_s > 0
    if mixed:
        assert res.co_tokens == ref_shorts
        assert [len(g) for g in res.co_tbt_s] == [SHORT_NEW - 1] * 2
        # the long prompt arrives at step 2, its 3 chunks run in micro-batches 2-4 with the
        # shorts' decodes (2 and 4): a decode gap ends in the prefill
        assert res.co_tbt_during_prefill_s and res.micro_batches == 13


def test_single_process_layout_matches_and_counts_no_comm(reference):
    res = launch(Layout.parse("1x1x1"), GenerateSpec("tiny", PROMPT, [100, 100, 100], NEW, 400))
    assert res.tokens == reference[0]
    torch.testing.assert_close(res.logits, reference[1], atol=1e-4, rtol=1e-4)
    assert res.micro_batches == 3 + NEW - 1
    assert res.comm_bytes_per_step["kvp"] == 0 and res.comm_bytes_per_step["spp"] == 0


def test_synthetic_prefill_decodes_on_a_random_kv_and_says_so():
    res = launch(Layout.parse("1x1x1"), GenerateSpec("tiny", PROMPT, [300], 3, 400, synthetic_prefill=True))
    assert res.synthetic_prefill and res.kv_tokens_per_rank == [302] and len(res.tokens) == 3
    assert res.micro_batches == 3 and len(res.chunk_times_s) == 1  # the last prompt token, then 2 decodes


def test_layout_parse_and_ranks():
    assert Layout.parse("1x2x4") == Layout(1, 2, 4)
    assert Layout.parse("tp=2xkvp=2") == Layout(2, 1, 2)
    lay = Layout.parse("tp=2xspp=2xkvp=2")
    assert [lay.coords(r) for r in (0, 1, 2, 5, 7)] == [(0, 0, 0), (0, 0, 1), (0, 1, 0), (1, 0, 1), (1, 1, 1)]
    assert all(lay.rank_of(*lay.coords(r)) == r for r in range(lay.world))
    assert list(Layout(spp=3).stage_layers(4, 0)) == [0, 1] and list(Layout(spp=3).stage_layers(4, 2)) == [3]
    with pytest.raises(ConfigError, match=r"--parallel 'kvp=2xkvp=3': cannot read 'kvp=3'; use TPxSPPxKVP"):
        Layout.parse("kvp=2xkvp=3")
    with pytest.raises(ConfigError, match=r"--parallel '1x2': a numeric layout has 3 degrees"):
        Layout.parse("1x2")
    with pytest.raises(ConfigError, match=r"--parallel 'spp=0': spp must be >= 1, got 0"):
        Layout.parse("spp=0")
    with pytest.raises(ConfigError, match=r"--parallel: spp=5 stages but the model has 4 layers"):
        Layout(spp=5).stage_layers(4, 0)
