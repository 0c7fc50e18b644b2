"""Profile the long-context ranks' own iterations and fit adaptive chunking's predictor.

The predictor must model the code that runs the mixed workload: a
:class:`~charbench.engine.lc_runner.StageWorker` (partial attention over its KV shard), not
the serving engine's runner. :class:`StageRunner` gives a single-rank StageWorker the
``forward(chunks)`` face of a ``ModelRunner`` so that
:func:`charbench.engine.chunk_profile.profile_iterations` times it; the fit is the engine's
NNLS (:meth:`BatchTimePredictor.fit`). The study keeps the result in its prepare cache::

    grid = profile_grid(cfg)
    predictor, samples = profile_and_fit(cfg, grid, log=print)
"""

from __future__ import annotations

import platform
from dataclasses import asdict
from typing import Any, Callable

import torch

from charbench.engine.adaptive_chunking import BatchTimePredictor, IterationSample
from charbench.engine.chunk_profile import ProfileGrid, fit_error, profile_iterations
from charbench.engine.lc_runner import GenerateSpec, StageWorker
from charbench.engine.parallel import Layout, ParallelGroups
from charbench.workloads.long_context.config import LongContextConfig

PREDICTOR_FILE = "predictor.json"
SAMPLES_FILE = "samples.json"


def profile_grid(cfg: LongContextConfig) -> ProfileGrid:
    """Iterations shaped like the mixed workload's: chunks up to 2048 over the long prompt's
    KV range, with and without the short requests' decodes."""
    ctx = cfg.mixed_context
    dctx = cfg.mixed_prompt_tokens
    chunks = tuple(c for c in (0, 32, 128, 512, 2048) if c <= max(ctx, 32))
    return ProfileGrid(chunks=chunks, contexts=(0, ctx // 2, ctx), decodes=(0, cfg.mixed_decodes),
                       decode_contexts=(dctx, dctx + 512), repeats=3)


class StageRunner:
    """A single-rank StageWorker with ``ModelRunner``'s ``forward`` interface (for profiling).

    Args:
        model: preset name.
        max_tokens: longest sequence an iteration touches.
        max_seqs: sequences (each its own block table).
        block_size: tokens per KV block.
    """

    def __init__(self, model: str, max_tokens: int, max_seqs: int, block_size: int) -> None:
        spec = GenerateSpec(model, [0], [1], 1, max_tokens, block_size, co_prompts=[[0]] * max(max_seqs - 1, 0), co_new_tokens=1)
        self.worker = StageWorker(spec, ParallelGroups.init(Layout(), 0))
        self.block_size = block_size
        self.num_blocks = -(-max_tokens // block_size)  # per sequence
        self.max_model_len = max_tokens
        self.model_config = self.worker.cfg
        self.device = torch.device("cpu")

    def forward(self, chunks: list[Any]) -> torch.Tensor | None:
        """Run one iteration (``SeqChunk`` list) as one micro-batch."""
        from charbench.engine.spp import PlanItem

        items = [PlanItem(c.seq_id, c.start_pos, len(c.token_ids), c.start_pos > 0 and len(c.token_ids) == 1, c.need_logits)
                 for c in chunks]
        return self.worker.run(items, [list(c.token_ids) for c in chunks])

    def shutdown(self) -> None:
        """Nothing to release (in-process)."""


def cache_inputs(cfg: LongContextConfig, grid: ProfileGrid) -> dict[str, Any]:
    """What the fitted predictor depends on: model, grid, threads, machine, code path."""
    return {
        "predictor": "lc_runner.StageWorker 1x1x1", "model": cfg.model, "block_size": cfg.block_size,
        "threads_per_rank": cfg.threads_per_rank, "grid": asdict(grid), "host": platform.node(),
        "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
    }


def profile_and_fit(cfg: LongContextConfig, grid: ProfileGrid,
                    log: Callable[[str], None] | None = None) -> tuple[BatchTimePredictor, list[IterationSample]]:
    """Time every grid iteration on one rank (``threads_per_rank`` threads) and fit the predictor."""
    prev = torch.get_num_threads()
    torch.set_num_threads(cfg.threads_per_rank)
    try:
        runner = StageRunner(cfg.model, grid.max_tokens(), 1 + max(grid.decodes), cfg.block_size)
        samples = profile_iterations(runner, grid, log=log)
    finally:
        torch.set_num_threads(prev)
    return fit_relative(samples), samples


def samples_payload(predictor: BatchTimePredictor, samples: list[IterationSample]) -> dict[str, Any]:
    """JSON of the profiled iterations and the fit's error on them."""
    return {"samples": [asdict(s) for s in samples], "error": fit_error(predictor, samples)}


def fit_relative(samples: list[IterationSample]) -> BatchTimePredictor:
    """Non-negative least squares of the *relative* error (rows weighted by 1 / time).

    :meth:`BatchTimePredictor.fit` minimizes absolute error, which the largest profiled
    iterations (seconds) dominate; the iterations that decide a chunk are the ones near the
    TBT budget (tens of ms), whose relative error it leaves large. Weighting each row by its
    inverse time fits every size to the same relative accuracy. Active set as in the engine:
    drop the most negative coefficient and refit.

    Raises:
        ConfigError: fewer samples than features or a sample without a positive time.
    """
    import numpy as np

    from charbench.engine.adaptive_chunking import FEATURES
    from charbench.errors import ConfigError

    if len(samples) < len(FEATURES) or any(not s.time_s or s.time_s <= 0 for s in samples):
        raise ConfigError(f"predictor: need >= {len(FEATURES)} profiled iterations with positive times, got {len(samples)}")
    y = np.array([s.time_s for s in samples], dtype=float)
    x = np.array([s.features() for s in samples]) / y[:, None]
    active = list(range(len(FEATURES)))
    coef = np.zeros(len(FEATURES))
    while active:
        sol, *_ = np.linalg.lstsq(x[:, active], np.ones(len(y)), rcond=None)
        if (sol >= 0).all():
            coef[active] = sol
            break
        active.pop(int(np.argmin(sol)))
    return BatchTimePredictor(coef.tolist())
