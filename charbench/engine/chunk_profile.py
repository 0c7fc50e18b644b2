"""Profile real engine iterations and fit adaptive chunking's batch-time predictor.

Each grid point is one :meth:`ModelRunner.forward` call shaped like a serving iteration:
one prefill chunk of ``chunk`` tokens at ``context`` cached tokens plus ``decodes`` decode
tokens at ``decode_context`` cached tokens each. Its median wall time (after a warm-up
call) becomes an :class:`~charbench.engine.adaptive_chunking.IterationSample`; the
predictor is the non-negative least-squares fit over them. The fitted predictor is kept in
the spine's prepare cache, keyed by the engine shape, the grid and the machine, so a study
profiles once per machine and loads it afterwards::

    cache = PrepareCache.for_study(study_name)
    got = cached_predictor(cache, EngineConfig(model="tiny-long", kv_cache_gb=0.5), PROFILE_GRIDS["quick"])
    got.predictor, got.path            # <entry>/predictor.json, for 'adaptive:<path>@50'

The KV rows the profiled iterations read are whatever the cache holds (timing only; the
attention cost does not depend on the values), and all decodes share one block table.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from charbench.engine.adaptive_chunking import BatchTimePredictor, IterationSample
from charbench.engine.api import EngineConfig
from charbench.errors import ConfigError
from charbench.prepare_cache import CacheEntry, PrepareCache

#: bump when the engine's iteration cost changes (a kernel), so old profiles are not reused
PROFILE_VERSION = "2"  # 2: CPU flash split for prefill chunks with a prefix

PREDICTOR_FILE = "predictor.json"
SAMPLES_FILE = "samples.json"


@dataclass(frozen=True)
class ProfileGrid:
    """The iterations to profile (every combination except an empty batch).

    Attributes:
        chunks: prefill chunk sizes (0 = decode-only iteration).
        contexts: tokens already cached for the prefilling sequence.
        decodes: decode tokens co-batched.
        decode_contexts: KV length of each decode (two or more, so that the decode count
            and the decodes' KV are not collinear in the fit).
        repeats: timed calls per point (the median is kept), after one warm-up.
    """

    chunks: tuple[int, ...] = (0, 32, 128, 512, 2048)
    contexts: tuple[int, ...] = (0, 4096, 16384)
    decodes: tuple[int, ...] = (0, 8)
    decode_contexts: tuple[int, ...] = (512, 4096)
    repeats: int = 3

    def __post_init__(self) -> None:
        if not self.chunks or not self.contexts or not self.decodes or not self.decode_contexts:
            raise ConfigError("profile grid: chunks, contexts, decodes and decode_contexts each need a value")
        if min(self.chunks) < 0 or min(self.contexts) < 0 or min(self.decodes) < 0 or min(self.decode_contexts) < 1:
            raise ConfigError("profile grid: sizes must be >= 0 (decode contexts >= 1)")
        if self.repeats < 1:
            raise ConfigError(f"profile grid: repeats must be >= 1, got {self.repeats}")

    def points(self) -> list[tuple[int, int, int, int]]:
        """``(chunk, context, decodes, decode_context)`` per iteration (a context only
        matters with a chunk, a decode context only with decodes)."""
        out = []
        for chunk in self.chunks:
            for ctx in (self.contexts if chunk else (0,)):
                for nd in self.decodes:
                    for dctx in (self.decode_contexts if nd else (0,)):
                        if chunk or nd:
                            out.append((chunk, ctx, nd, dctx))
        return out

    def max_tokens(self) -> int:
        """Longest sequence a profiled iteration touches."""
        return max(max(self.contexts) + max(self.chunks), max(self.decode_contexts) + 1)


PROFILE_GRIDS: dict[str, ProfileGrid] = {
    "tiny": ProfileGrid(chunks=(0, 16, 64), contexts=(0, 256), decodes=(0, 2), decode_contexts=(32, 128), repeats=1),
    "quick": ProfileGrid(),
    "long": ProfileGrid(chunks=(0, 32, 128, 512, 2048, 4096), contexts=(0, 8192, 32768, 65536),
                        decodes=(0, 8), decode_contexts=(1024, 16384)),
}
"""Named grids: ``tiny`` (tests), ``quick`` (up to 16K context), ``long`` (up to 64K)."""


def _sync(device: Any) -> None:
    if getattr(device, "type", "cpu") == "cuda":
        torch.cuda.synchronize(device)


def profile_iterations(
    runner: Any,
    grid: ProfileGrid,
    clock: Callable[[], float] = time.perf_counter,
    log: Callable[[str], None] | None = None,
) -> list[IterationSample]:
    """Time one real iteration per grid point on ``runner`` (a ``ModelRunner``).

    Raises:
        ConfigError: the runner's KV cache or context length is too small for the grid.
    """
    from charbench.engine.runner import SeqChunk

    bs = int(runner.block_size)
    longest = grid.max_tokens()
    if -(-longest // bs) > int(runner.num_blocks):
        raise ConfigError(
            f"profile grid: iterations reach {longest} tokens but the KV cache holds "
            f"{int(runner.num_blocks) * bs}; raise kv_cache_gb or shrink the grid"
        )
    if longest > int(runner.max_model_len):
        raise ConfigError(
            f"profile grid: iterations reach {longest} tokens but the model allows "
            f"{runner.max_model_len}; use a model with more positions or shrink the grid"
        )
    gen = torch.Generator().manual_seed(0)
    vocab = int(runner.model_config.vocab_size)
    samples = []
    for chunk, ctx, nd, dctx in grid.points():
        work = []
        if chunk:
            table = list(range(-(-(ctx + chunk) // bs)))
            ids = torch.randint(0, vocab, (chunk,), generator=gen).tolist()
            work.append(SeqChunk(0, ids, ctx, table, False))
        dtable = list(range(-(-(dctx + 1) // bs)))
        work += [SeqChunk(1 + i, [1], dctx, dtable, True) for i in range(nd)]
        runner.forward(work)  # warm-up (allocator, RoPE table growth)
        _sync(runner.device)
        times = []
        for _ in range(grid.repeats):
            t0 = clock()
            runner.forward(work)
            _sync(runner.device)
            times.append(clock() - t0)
        sample = IterationSample(chunk, ctx, nd, nd * dctx, statistics.median(times))
        samples.append(sample)
        if log is not None:
            log(f"profiled chunk={chunk} context={ctx} decodes={nd}x{dctx}: {sample.time_s * 1e3:.2f} ms")
    return samples


def fit_error(predictor: BatchTimePredictor, samples: list[IterationSample]) -> dict[str, float]:
    """Mean and max absolute relative error of ``predictor`` on measured ``samples``."""
    errs = [abs(predictor.predict(s) - s.time_s) / s.time_s for s in samples if s.time_s]
    return {"mean_abs_rel_error": statistics.fmean(errs), "max_abs_rel_error": max(errs)} if errs else {}


@dataclass
class CachedPredictor:
    """A fitted predictor and where it lives.

    Attributes:
        predictor: the model.
        path: its ``predictor.json`` (give it to ``adaptive:<path>@<SLO_MS>``).
        entry: the prepare-cache entry.
        hit: True when it was loaded rather than profiled now.
        samples: the profiled iterations.
        error: :func:`fit_error` on them.
    """

    predictor: BatchTimePredictor
    path: Path
    entry: CacheEntry
    hit: bool
    samples: list[IterationSample]
    error: dict[str, float]


def cache_inputs(cfg: EngineConfig, grid: ProfileGrid) -> dict[str, Any]:
    """What the profile depends on: the engine shape, the grid and the machine."""
    return {
        "engine": {k: getattr(cfg, k) for k in ("model", "dtype", "device", "tp", "block_size", "attention_backend")},
        "grid": asdict(grid),
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def cached_predictor(
    cache: PrepareCache,
    cfg: EngineConfig,
    grid: ProfileGrid,
    make_runner: Callable[[EngineConfig], Any] | None = None,
    log: Callable[[str], None] | None = None,
) -> CachedPredictor:
    """Load the predictor for ``cfg`` and ``grid`` from ``cache``, profiling it on a miss.

    Args:
        cache: the study's prepare cache.
        cfg: the engine to profile (its ``kv_cache_gb`` must hold ``grid.max_tokens()``).
        grid: the iterations.
        make_runner: builds the runner (default ``charbench.engine.runner.make_runner``).
        log: progress lines.
    """
    entry = cache.entry(cache_inputs(cfg, grid), version=PROFILE_VERSION)
    hit = entry.hit
    if not hit:
        if make_runner is None:
            from charbench.engine.runner import make_runner
        runner = make_runner(cfg)
        try:
            samples = profile_iterations(runner, grid, log=log)
        finally:
            runner.shutdown()
        predictor = BatchTimePredictor.fit(samples)
        with entry.building() as tmp:
            predictor.save(tmp / PREDICTOR_FILE)
            (tmp / SAMPLES_FILE).write_text(json.dumps(
                {"samples": [asdict(s) for s in samples], "error": fit_error(predictor, samples)}, indent=1))
    path = entry.path / PREDICTOR_FILE
    predictor = BatchTimePredictor.load(path)
    samples = [IterationSample(**d) for d in json.loads((entry.path / SAMPLES_FILE).read_text())["samples"]]
    return CachedPredictor(predictor, path, entry, hit, samples, fit_error(predictor, samples))
