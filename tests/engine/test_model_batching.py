"""The runner's batching invariants on the tiny preset: chunked prefill equals one-shot,
paged equals contiguous, a sequence's output does not depend on its batch mates, and the
Triton decode backend (interpreted on CPU) equals the torch backend."""

from __future__ import annotations

import pytest
import torch

from charbench.engine.api import EngineConfig
from charbench.engine.runner import SeqChunk, make_runner

PROMPT = [256] + list(b"Paged attention keeps the KV cache in fixed-size blocks.")  # 57 tokens
OTHER = [256] + list(b"Another sequence")
ATOL = 2e-5


def _greedy(drv, seq_id: int, first_logits: torch.Tensor, steps: int) -> tuple[list[int], list[torch.Tensor]]:
    toks, logits = [], [first_logits]
    t = int(first_logits.argmax())
    for _ in range(steps):
        toks.append(t)
        lg = drv.run((seq_id, [t]))[0]
        logits.append(lg)
        t = int(lg.argmax())
    return toks, logits


@pytest.mark.parametrize("sizes", [[1, 3, 7, 16, 30], [5] * 11 + [2], [56, 1], [4, 4, 49]])
def test_chunked_prefill_equals_one_shot(tiny_runner, chunk_driver, sizes):
    assert sum(sizes) == len(PROMPT)
    one = chunk_driver(tiny_runner)
    ref = one.run((0, PROMPT))[0]
    ref_toks, ref_logits = _greedy(one, 0, ref, 4)

    drv = chunk_driver(tiny_runner, scatter_seed=7)
    pos = 0
    for n in sizes:
        logits = drv.run((0, PROMPT[pos : pos + n]))
        pos += n
    torch.testing.assert_close(logits[0], ref, atol=ATOL, rtol=ATOL)
    toks, got_logits = _greedy(drv, 0, logits[0], 4)
    assert toks == ref_toks
    torch.testing.assert_close(torch.stack(got_logits), torch.stack(ref_logits), atol=ATOL, rtol=ATOL)


def test_paged_equals_contiguous(tiny_runner, chunk_driver):
    contiguous = chunk_driver(tiny_runner)  # blocks 0, 1, 2, ... in order
    a = contiguous.run((0, PROMPT[:20]))[0]
    scattered = chunk_driver(tiny_runner, scatter_seed=123, share=contiguous)
    b = scattered.run((0, PROMPT[:20]))[0]
    assert contiguous.tables[0] == list(range(len(contiguous.tables[0])))
    assert scattered.tables[0] != contiguous.tables[0]
    torch.testing.assert_close(a, b, atol=ATOL, rtol=ATOL)
    ta, la = _greedy(contiguous, 0, a, 6)
    tb, lb = _greedy(scattered, 0, b, 6)
    assert ta == tb
    torch.testing.assert_close(torch.stack(la), torch.stack(lb), atol=ATOL, rtol=ATOL)


def test_output_independent_of_batch(tiny_runner, chunk_driver):
    """Sequence 0 alone vs. with other sequences prefilling and decoding beside it."""
    alone = chunk_driver(tiny_runner)
    ref = [alone.run((0, PROMPT[:24]))[0]]
    ref_toks, ref_logits = _greedy(alone, 0, ref[0], 5)

    drv = chunk_driver(tiny_runner, scatter_seed=5)
    drv.run((1, OTHER))  # a sequence already decoding
    logits = drv.run((1, [65]), (0, PROMPT[:24]), (2, OTHER[:9]))  # decode + 2 prefills
    got = [logits[1]]
    t = int(got[0].argmax())
    toks = []
    extra = [(1, 66), (2, 67), (3, 1)]
    for step in range(5):
        toks.append(t)
        # seq 0 decodes among a decode of seq 1, a prefill chunk of seq 2 and a new seq 3
        specs = [(1, [66 + step]), (0, [t]), (2, OTHER[9 + step : 10 + step]),
                 (3, OTHER[: 3 + step] if step == 0 else [extra[step % 3][1]])]
        lg = drv.run(*specs)
        got.append(lg[1])
        t = int(lg[1].argmax())
    assert toks == ref_toks
    torch.testing.assert_close(torch.stack(got), torch.stack(ref_logits), atol=ATOL, rtol=ATOL)


def test_need_logits_order_and_empty(tiny_runner, chunk_driver):
    drv = chunk_driver(tiny_runner)
    chunks = [drv.chunk(0, PROMPT[:10], need_logits=False), drv.chunk(1, OTHER, need_logits=True)]
    out = tiny_runner.forward(chunks)
    assert out.shape == (1, tiny_runner.model_config.vocab_size) and out.dtype == torch.float32
    # prefill (seq 0, 2nd chunk) listed before a decode (seq 1): logits stay in chunk order
    out2 = tiny_runner.forward([drv.chunk(0, PROMPT[10:14]), drv.chunk(1, [70])])
    solo = chunk_driver(tiny_runner, share=drv)
    solo.run((5, OTHER))
    torch.testing.assert_close(out2[1], solo.run((5, [70]))[0], atol=ATOL, rtol=ATOL)
    assert tiny_runner.forward([]).shape == (0, tiny_runner.model_config.vocab_size)
    with pytest.raises(ValueError, match="token id"):
        tiny_runner.forward([SeqChunk(9, [10_000], 0, [0], True)])
    with pytest.raises(ValueError, match="block id"):
        tiny_runner.forward([SeqChunk(9, [1], 0, [tiny_runner.num_blocks], True)])


def test_triton_backend_equals_torch(tiny_runner, chunk_driver, monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    tri = make_runner(EngineConfig(model="tiny", kv_cache_gb=0.002, block_size=4, seed=3,
                                   attention_backend="triton"))
    a, b = chunk_driver(tiny_runner), chunk_driver(tri, scatter_seed=2)
    la = a.run((0, PROMPT[:30]), (1, OTHER))
    lb = b.run((0, PROMPT[:30]), (1, OTHER))
    torch.testing.assert_close(la, lb, atol=ATOL, rtol=ATOL)
    for step in range(3):
        ta, tb = la.argmax(-1).tolist(), lb.argmax(-1).tolist()
        assert ta == tb
        la = a.run((0, [ta[0]]), (1, [ta[1]]))
        lb = b.run((0, [tb[0]]), (1, [tb[1]]))
        torch.testing.assert_close(la, lb, atol=ATOL, rtol=ATOL)


def test_triton_backend_needs_cuda_or_interpreter(monkeypatch):
    pytest.importorskip("triton")
    from charbench.errors import DeviceError

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(DeviceError, match="--attention-backend triton"):
        make_runner(EngineConfig(model="tiny", attention_backend="triton"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_cuda_chunked_prefill_and_backends(dtype, chunk_driver, monkeypatch):
    """On CUDA: chunked prefill (lower-right causal SDPA) equals one-shot, and the Triton
    decode backend equals the torch backend."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    cfg = dict(model="tiny", device="cuda", dtype=dtype, kv_cache_gb=0.01, block_size=16, seed=3)
    torch_r = make_runner(EngineConfig(attention_backend="torch", **cfg))
    tri_r = make_runner(EngineConfig(attention_backend="triton", **cfg))
    tol = 2e-4 if dtype == "fp32" else 5e-2
    one = chunk_driver(torch_r)
    ref = one.run((0, PROMPT))[0]
    drv = chunk_driver(torch_r, scatter_seed=3, share=one)
    for a, b in [(0, 5), (5, 21), (21, 40), (40, len(PROMPT))]:
        got = drv.run((0, PROMPT[a:b]))[0]
    torch.testing.assert_close(got, ref, atol=tol, rtol=tol)
    tri = chunk_driver(tri_r, scatter_seed=4)
    lt = tri.run((0, PROMPT), (1, OTHER))
    lo = one.run((1, OTHER))
    torch.testing.assert_close(lt[0], ref, atol=tol, rtol=tol)
    for step in range(4):
        t0 = int(ref.argmax())
        ref = one.run((0, [t0]))[0]
        lt = tri.run((0, [t0]), (1, [7 + step]))
        torch.testing.assert_close(lt[0], ref, atol=tol, rtol=tol)
    assert lo.shape[0] == 1
