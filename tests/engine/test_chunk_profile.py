"""Profiling engine iterations for adaptive chunking's predictor, and the prepare cache."""

from __future__ import annotations

import json

import pytest

from charbench.engine.adaptive_chunking import BatchTimePredictor, IterationSample
from charbench.engine.api import EngineConfig
from charbench.engine.chunk_profile import (
    PROFILE_GRIDS,
    ProfileGrid,
    cache_inputs,
    cached_predictor,
    fit_error,
    profile_iterations,
)
from charbench.engine.runner import ModelRunner
from charbench.errors import ConfigError
from charbench.prepare_cache import PrepareCache

TRUE = [1e-3, 2e-5, 5e-9, 2e-9, 1e-4, 2e-9]


class _FakeRunner:
    """forward() advances a fake clock by TRUE's time for the batch it is given."""

    block_size, num_blocks, max_model_len = 16, 4096, 1 << 20

    class model_config:  # noqa: N801
        vocab_size = 258

    device = None

    def __init__(self) -> None:
        self.now = 0.0
        self.calls: list[list] = []
        self.shut = False

    def clock(self) -> float:
        return self.now

    def forward(self, work):
        self.calls.append(work)
        pre = [c for c in work if not c.need_logits]
        dec = [c for c in work if c.need_logits]
        chunk = len(pre[0].token_ids) if pre else 0
        ctx = pre[0].start_pos if pre else 0
        self.now += BatchTimePredictor(TRUE).predict(
            IterationSample(chunk, ctx, len(dec), sum(c.start_pos for c in dec)))

    def shutdown(self) -> None:
        self.shut = True


def test_profile_with_a_fake_clock_recovers_the_cost_model():
    runner = _FakeRunner()
    grid = ProfileGrid(chunks=(0, 64, 256, 1024), contexts=(0, 4096, 16384), decodes=(0, 2, 8), decode_contexts=(1000, 3000), repeats=2)
    samples = profile_iterations(runner, grid, clock=runner.clock)
    assert [(s.chunk_tokens, s.prefill_context, s.num_decodes, s.decode_context) for s in samples] == [
        (c, x, n, n * d) for c, x, n, d in grid.points()]
    assert len(samples) == 4 + 3 * 3 * 5  # decode-only: 2 counts x 2 contexts; chunks x contexts x (1 + 4)
    assert len(runner.calls) == len(samples) * 3  # a warm-up and two timed calls each
    last = runner.calls[-1]  # chunk 1024 at 16384 with 8 decodes at 3000
    assert [c.start_pos for c in last] == [16384] + [3000] * 8
    assert len(last[0].block_table) == (16384 + 1024) // 16 and len(last[1].block_table) == 188
    pred = BatchTimePredictor.fit(samples)
    assert pred.coef == pytest.approx(TRUE, rel=1e-6, abs=1e-12)
    assert fit_error(pred, samples)["max_abs_rel_error"] < 1e-6


def test_profile_refuses_a_grid_larger_than_the_cache():
    runner = _FakeRunner()
    runner.num_blocks = 10
    with pytest.raises(ConfigError, match=r"profile grid: iterations reach 18432 tokens but the KV cache holds 160; raise kv_cache_gb or shrink the grid"):
        profile_iterations(runner, ProfileGrid())
    runner.num_blocks, runner.max_model_len = 4096, 4096
    with pytest.raises(ConfigError, match=r"profile grid: iterations reach 18432 tokens but the model allows 4096; use a model with more positions"):
        profile_iterations(runner, ProfileGrid())
    with pytest.raises(ConfigError, match=r"profile grid: repeats must be >= 1, got 0"):
        ProfileGrid(repeats=0)


def test_cached_predictor_profiles_once_on_the_real_runner(tmp_path):
    """A miss profiles real ModelRunner iterations and writes the entry; a hit only loads."""
    cfg = EngineConfig(model="tiny", kv_cache_gb=0.01, max_num_seqs=4)
    built: list[ModelRunner] = []

    def make(c: EngineConfig) -> ModelRunner:
        built.append(ModelRunner(c))
        return built[-1]

    cache = PrepareCache.for_study("lc-test", tmp_path)
    lines: list[str] = []
    got = cached_predictor(cache, cfg, PROFILE_GRIDS["tiny"], make_runner=make, log=lines.append)
    assert not got.hit and len(built) == 1 and built[0]._closed
    assert len(got.samples) == len(PROFILE_GRIDS["tiny"].points()) == 14
    assert all(s.time_s > 0 for s in got.samples) and all(c >= 0 for c in got.predictor.coef)
    assert lines[0].startswith("profiled chunk=0 context=0 decodes=2x32: ")
    assert got.path == got.entry.path / "predictor.json" and got.path.parent.parent == tmp_path / "lc-test"
    saved = json.loads((got.entry.path / "samples.json").read_text())
    assert saved["error"] == pytest.approx(got.error)
    again = cached_predictor(cache, cfg, PROFILE_GRIDS["tiny"], make_runner=make)
    assert again.hit and len(built) == 1 and again.predictor.coef == got.predictor.coef
    # another grid, or another engine shape, is another entry
    assert cache.entry(cache_inputs(cfg, ProfileGrid(repeats=2))).key != got.entry.key
    assert cache.entry(cache_inputs(EngineConfig(model="small", kv_cache_gb=0.01), PROFILE_GRIDS["tiny"])).key != got.entry.key
