"""Cross-model cache capture/injection (DroidSpeak) and the CacheBlend baseline: exactness."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from charbench.engine.api import EngineConfig
from charbench.engine.cache_transfer import blend, blend_token_count, capture, check_group, greedy_after, inject
from charbench.engine.runner import ModelRunner, SeqChunk, make_runner
from charbench.errors import ConfigError

CTX = [5 + (7 * i) % 200 for i in range(37)]  # 37 tokens: spans 3 blocks of 16
QUERY = [11, 42, 99]
CTX_TABLE, OTHER_TABLE = [0, 1, 2, 3], [4, 5, 6, 7]


def _runner(seed: int) -> ModelRunner:
    return make_runner(EngineConfig(model="tiny", seed=seed, kv_cache_gb=0.01, max_model_len=64))


@pytest.fixture(scope="module")
def sender() -> ModelRunner:
    return _runner(1)


@pytest.fixture(scope="module")
def receiver() -> ModelRunner:
    return _runner(2)


@pytest.fixture(scope="module")
def twin() -> ModelRunner:
    return _runner(1)


def _kv(runner: ModelRunner, table: list[int], n: int) -> list[torch.Tensor]:
    slots = torch.tensor([table[p // runner.block_size] * runner.block_size + p % runner.block_size for p in range(n)])
    out = []
    for kc, vc in runner.kv_cache.layers:
        out.append(torch.stack([kc.view(-1, *kc.shape[2:])[slots], vc.view(-1, *vc.shape[2:])[slots]]))
    return out


def _query_logits(runner: ModelRunner, table: list[int]) -> torch.Tensor:
    return runner.forward([SeqChunk(0, QUERY, len(CTX), table, True)])[0]


def _full_prefill(runner: ModelRunner, table: list[int]) -> torch.Tensor:
    runner.forward([SeqChunk(0, CTX, 0, table, False)])
    return _query_logits(runner, table)


def test_recompute_all_from_own_embeddings_equals_full_prefill(sender, receiver) -> None:
    ref = _full_prefill(receiver, CTX_TABLE)
    ref_kv = _kv(receiver, CTX_TABLE, len(CTX))
    cache = capture(sender, CTX, OTHER_TABLE)
    own_e0 = F.embedding(torch.tensor(CTX), receiver.model.embed)
    inject(receiver, cache, OTHER_TABLE, recompute=(0, receiver.model_config.num_layers - 1), e_start=own_e0)
    for got, want in zip(_kv(receiver, OTHER_TABLE, len(CTX)), ref_kv):
        assert torch.equal(got, want)
    assert torch.equal(_query_logits(receiver, OTHER_TABLE), ref)


def test_recompute_none_is_full_kv_reuse(sender, receiver) -> None:
    cache = capture(sender, CTX, CTX_TABLE)
    sender_kv = _kv(sender, CTX_TABLE, len(CTX))
    inject(receiver, cache, OTHER_TABLE, recompute=None)
    for got, want in zip(_kv(receiver, OTHER_TABLE, len(CTX)), sender_kv):
        assert torch.equal(got, want)
    # the same as copying the sender's blocks into the receiver's cache by hand
    reuse = _query_logits(receiver, OTHER_TABLE)
    receiver.kv_cache.storage[:, :, CTX_TABLE] = sender.kv_cache.storage[:, :, CTX_TABLE]
    assert torch.equal(_query_logits(receiver, CTX_TABLE), reuse)
    # and it differs from the receiver's own prefill: the test can fail
    assert not torch.allclose(_full_prefill(receiver, CTX_TABLE), reuse, atol=1e-3)


def test_capture_leaves_a_normal_prefill_and_e_cache(sender, twin) -> None:
    cache = capture(sender, CTX, CTX_TABLE)
    ref = _full_prefill(twin, OTHER_TABLE)
    assert torch.equal(_query_logits(sender, CTX_TABLE), ref)
    assert len(cache.e) == len(cache.k) == sender.model_config.num_layers
    assert torch.equal(cache.e[0], F.embedding(torch.tensor(CTX), sender.model.embed))
    assert cache.kv_layer_bytes() == 2 * len(CTX) * 4 * 32 * 4  # K+V, 4 kv heads x 32 dims, fp32
    assert cache.e_layer_bytes() == len(CTX) * 256 * 4


@pytest.mark.parametrize("mode", ["reuse", "g00", "g12", "g03", "g33", "blend0", "blend30", "blend100"])
def test_identical_weights_every_mode_same_output(sender, twin, mode) -> None:
    ref = _full_prefill(twin, CTX_TABLE)
    cache = capture(sender, CTX, OTHER_TABLE)
    if mode == "reuse":
        inject(twin, cache, OTHER_TABLE)
    elif mode.startswith("g"):
        inject(twin, cache, OTHER_TABLE, recompute=(int(mode[1]), int(mode[2])))
    else:
        blend(twin, cache, OTHER_TABLE, int(mode[5:]) / 100)
    got = _query_logits(twin, OTHER_TABLE)
    if mode.startswith("blend"):
        # scattered query rows go through another SDPA call: equal up to float rounding
        assert torch.allclose(got, ref, atol=1e-5, rtol=0)
        assert int(got.argmax()) == int(ref.argmax())
    else:
        assert torch.equal(got, ref)


def _causal_layers(runner: ModelRunner, x: torch.Tensor, start: int, stop: int) -> list[torch.Tensor]:
    """Reference: the receiver's layers with dense causal SDPA (no paged cache), K/V per layer."""
    model = runner.model
    freqs = model.rope.lookup(torch.arange(x.shape[0]))
    kvs = []

    def attn(q, k, v, _kc, _vc, _meta):
        kvs.append(torch.stack([k, v]))
        rep = q.shape[1] // k.shape[1]
        o = F.scaled_dot_product_attention(q.transpose(0, 1), k.repeat_interleave(rep, 1).transpose(0, 1),
                                           v.repeat_interleave(rep, 1).transpose(0, 1), is_causal=True)
        return o.transpose(0, 1)

    for i in range(start, stop):
        x = model.layers[i](x, freqs, None, None, attn, None, lambda _t: None)
    return kvs


def test_recomputed_block_is_receiver_layers_on_sender_e(sender, receiver) -> None:
    cache = capture(sender, CTX, CTX_TABLE)
    inject(receiver, cache, OTHER_TABLE, recompute=(1, 2))
    got = _kv(receiver, OTHER_TABLE, len(CTX))
    with torch.inference_mode():
        want = _causal_layers(receiver, cache.e[1], 1, 3)
    for layer, ref in zip((1, 2), want):
        assert torch.allclose(got[layer], ref, atol=1e-5, rtol=0)
    for layer in (0, 3):  # outside the group: the sender's K/V, bit for bit
        assert torch.equal(got[layer], torch.stack([cache.k[layer], cache.v[layer]]))


def test_two_groups_reuse_only_one_layer(sender, twin, receiver) -> None:
    cache = capture(sender, CTX, CTX_TABLE)
    ref = _full_prefill(twin, CTX_TABLE)
    inject(twin, cache, OTHER_TABLE, recompute=[(2, 3), (0, 0)])
    assert torch.equal(_query_logits(twin, OTHER_TABLE), ref)
    inject(receiver, cache, OTHER_TABLE, recompute=[(0, 0), (2, 3)])
    got = _kv(receiver, OTHER_TABLE, len(CTX))
    assert torch.equal(got[1], torch.stack([cache.k[1], cache.v[1]]))
    with torch.inference_mode():
        want = _causal_layers(receiver, cache.e[2], 2, 4)
    assert torch.allclose(got[3], want[1], atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match=r"recompute groups \[0, 2\] and \[2, 3\] overlap; give disjoint groups"):
        inject(receiver, cache, OTHER_TABLE, recompute=[(0, 2), (2, 3)])


def test_blend_recomputes_the_most_deviating_tokens(sender, receiver) -> None:
    cache = capture(sender, CTX, CTX_TABLE)
    chosen = blend(receiver, cache, OTHER_TABLE, 0.25)
    assert len(chosen) == blend_token_count(len(CTX), 0.25) == 10
    assert chosen == sorted(chosen)
    got = _kv(receiver, OTHER_TABLE, len(CTX))
    others = [i for i in range(len(CTX)) if i not in chosen]
    for layer in range(1, 4):  # tokens not chosen keep the sender's K/V
        assert torch.equal(got[layer][:, others], torch.stack([cache.k[layer], cache.v[layer]])[:, others])
        assert not torch.allclose(got[layer][:, chosen], torch.stack([cache.k[layer], cache.v[layer]])[:, chosen])


def test_greedy_after_decodes_over_injected_cache(sender, twin) -> None:
    cache = capture(sender, CTX, CTX_TABLE)
    inject(twin, cache, OTHER_TABLE, recompute=(2, 3))
    got = greedy_after(twin, QUERY, len(CTX), OTHER_TABLE, 3)
    ids = CTX + QUERY
    twin.forward([SeqChunk(0, ids, 0, CTX_TABLE, False)])
    want = []
    for _ in range(3):
        logits = twin.forward([SeqChunk(0, ids[-1:] if want else ids[-len(QUERY):], len(ids) - (1 if want else len(QUERY)), CTX_TABLE, True)])
        want.append(int(logits[0].argmax()))
        ids = ids + [want[-1]]
    assert got == want


def test_bad_group_and_ratio_are_named() -> None:
    with pytest.raises(ConfigError, match=r"recompute group \[3, 2\]: need 0 <= a <= b < 4 \(layers\)"):
        check_group(4, (3, 2))
    with pytest.raises(ConfigError, match=r"--blend-ratio: must be in \[0, 1\], got 1.5"):
        blend_token_count(10, 1.5)
