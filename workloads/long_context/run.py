"""The long-context study: TTFT/TBT against context and layout, and the mixed workload.

Points, per layout (the resource group: one :class:`RankPool` of ranks)::

    {"parallel": "kvp=2", "workload": "prefill", "context": 32768, "chunk": "fixed:1024"}
    {"parallel": "kvp=2", "workload": "mixed",   "context": 8192,  "chunk": "adaptive"}

``prefill``: one prompt of ``context`` tokens in fixed chunks, then ``decode_steps`` greedy
tokens (TTFT, decode TBT, prefill throughput, KV bytes per rank, communication per step).
``mixed``: ``mixed_decodes`` short requests decode while the long prompt arrives and is
prefilled under the point's chunk policy (TTFT of the long prompt; p50/p99 TBT of the
co-batched decodes while it prefills; the chunks chosen). Adaptive chunking uses the
batch-time predictor fitted in the prepare phase on this machine's own rank iterations::

    result = run_study(LongContextStudy(validate(cfg)), common, settings)
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from charbench.record import Record
from charbench.study import Context, Study
from charbench.workloads.long_context import STUDY
from charbench.workloads.long_context.config import LongContextConfig

COUNTED = "counted (tensor sizes x elements, from the ranks' own bookkeeping)"
COMM_KINDS = ("kvp", "tp", "spp")


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated ``q``-th percentile (numpy's default), None for no values."""
    if not values:
        return None
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=float), q))


def random_prompt(n: int, seed: int, vocab: int = 256) -> list[int]:
    """``n`` seeded token ids below ``vocab`` (the byte tokenizer's bytes)."""
    import torch

    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


class LongContextStudy(Study):
    """Mnemosyne's long-context parallelism on the built-in engine, one point per (layout, workload, context, chunk)."""

    name = STUDY.command
    report_hook = STUDY.report_hook
    resource_knobs = ("parallel",)

    def __init__(self, cfg: LongContextConfig) -> None:
        self.cfg = cfg
        self._predictor: Any = None
        self._predictor_error: float | None = None
        from charbench.engine.runner import resolve_model_config

        # prompt ids below the model's vocabulary (the byte tokenizer's 256 bytes for the presets)
        self._vocab = min(256, resolve_model_config(cfg.model).vocab_size)

    # ---- sweep ----------------------------------------------------------------------

    def points(self) -> list[dict[str, Any]]:
        """Per layout: the prefill sweep (ascending context), then the mixed workload per chunk policy."""
        from charbench.engine.parallel import Layout

        c = self.cfg
        out: list[dict[str, Any]] = []
        for spec in c.parallel:
            label = Layout.parse(spec).label
            out += [{"parallel": label, "workload": "prefill", "context": n, "chunk": f"fixed:{c.prefill_chunk}"} for n in c.contexts]
            if c.mixed_context > 0:
                out += [{"parallel": label, "workload": "mixed", "context": c.mixed_context, "chunk": ch} for ch in c.chunk]
        return out

    # ---- prepare: the adaptive predictor ----------------------------------------------

    def prepare_inputs(self) -> Any:
        """The profile grid and machine when a mixed point chunks adaptively, else nothing."""
        if not self.cfg.has_adaptive:
            return None
        from charbench.workloads.long_context.profile import cache_inputs, profile_grid

        return cache_inputs(self.cfg, profile_grid(self.cfg))

    def prepare(self, cache_dir: Path, log: Any) -> None:
        """Profile the ranks' iterations on one rank and fit the batch-time predictor."""
        from charbench.workloads.long_context.profile import PREDICTOR_FILE, SAMPLES_FILE, profile_and_fit, profile_grid, samples_payload

        grid = profile_grid(self.cfg)
        log(f"prepare: profiling {len(grid.points())} iterations of {self.cfg.model} for the adaptive-chunking predictor")
        predictor, samples = profile_and_fit(self.cfg, grid, log=log)
        predictor.save(cache_dir / PREDICTOR_FILE)
        (cache_dir / SAMPLES_FILE).write_text(json.dumps(samples_payload(predictor, samples), indent=1))

    def setup(self, ctx: Context) -> None:
        """Load the fitted predictor (adaptive runs) and record its fit error."""
        if not self.cfg.has_adaptive or ctx.cache_dir is None:
            return
        from charbench.engine.adaptive_chunking import BatchTimePredictor
        from charbench.workloads.long_context.profile import PREDICTOR_FILE, SAMPLES_FILE

        self._predictor = BatchTimePredictor.load(ctx.cache_dir / PREDICTOR_FILE)
        payload = json.loads((ctx.cache_dir / SAMPLES_FILE).read_text())
        import pandas as pd

        rows = [dict(s, predicted_s=self._predictor.predict(_sample(s))) for s in payload["samples"]]
        ctx.store.write_table("predictor_samples", pd.DataFrame(rows))
        ctx.store.write_json("predictor.json", {**self._predictor.to_dict(), "error": payload.get("error", {})})
        err = payload.get("error", {})
        self._predictor_error = err.get("mean_abs_rel_error")
        ctx.log(f"adaptive predictor: {len(rows)} profiled iterations, mean |error| {100 * err.get('mean_abs_rel_error', float('nan')):.1f}%")

    # ---- resource: the ranks of one layout --------------------------------------------

    def acquire(self, group: dict[str, Any], ctx: Context) -> Any:
        """Start the layout's ranks once for all its points."""
        from charbench.engine.parallel import Layout
        from charbench.workloads.long_context.ranks import RankPool

        layout = Layout.parse(group["parallel"])
        ctx.log(f"long-context: starting {layout.world} rank(s) for {layout.label} (tp x spp x kvp)")
        return RankPool(layout, self.cfg.threads_per_rank)

    def release(self, resource: Any, ctx: Context) -> None:
        """Stop the ranks."""
        if resource is not None:
            resource.close()

    # ---- one point --------------------------------------------------------------------

    def _per_rank(self, kvp: int, longest: int) -> int:
        c = self.cfg
        return c.max_tokens_per_rank if c.max_tokens_per_rank is not None else -(-longest // kvp)

    def run_point(self, params: dict[str, Any], ctx: Context) -> Any:
        """Run the point's generation on the group's ranks inside the window ``generate``."""
        if params["workload"] == "mixed":
            return self._mixed(params, ctx)
        return self._prefill(params, ctx)

    def _prefill(self, params: dict[str, Any], ctx: Context) -> Record:
        from charbench.engine.lc_runner import GenerateSpec

        c, pool = self.cfg, ctx.resource
        n = int(params["context"])
        size = int(params["chunk"].split(":")[1])
        chunks = [size] * (n // size) + ([n % size] if n % size else [])
        spec = GenerateSpec(c.model, random_prompt(n, ctx.seed, self._vocab), chunks, c.decode_steps,
                            self._per_rank(pool.layout.kvp, n + c.decode_steps), c.block_size, ctx.seed, c.threads_per_rank)
        with ctx.window("generate") as w:
            res = pool.run(spec)
        rec = w.fields()
        tbt_ms = [t * 1e3 for t in res.tbt_s]
        rec.set("ttft_ms", res.ttft_s * 1e3)
        rec.derive("prefill_throughput_tok_s", lambda t: n / (t / 1e3) if t > 0 else None, "ttft_ms", formula="context / TTFT")
        rec.set("p50_tbt_ms", percentile(tbt_ms, 50), reason="fewer than 2 tokens generated")
        rec.set("p99_tbt_ms", percentile(tbt_ms, 99), reason="fewer than 2 tokens generated")
        rec.set("chunk_count", len(chunks))
        self._common_fields(rec, params, res, ctx)
        self._tables(params, res, chunks, [0] + _cumsum(chunks)[:-1], [None] * len(chunks), ctx)
        return rec

    def _mixed(self, params: dict[str, Any], ctx: Context) -> Record:
        from charbench.engine.lc_runner import GenerateSpec
        from charbench.workloads.long_context.schedule import chunk_schedule

        c, pool = self.cfg, ctx.resource
        n = int(params["context"])
        shorts = [random_prompt(c.mixed_prompt_tokens, ctx.seed + 1 + i, self._vocab) for i in range(c.mixed_decodes)]
        # a short request has produced one token (its prefill) before the long prompt arrives
        sched = chunk_schedule(params["chunk"], n, [c.mixed_prompt_tokens + 1] * c.mixed_decodes, self._predictor,
                               c.tbt_slo_ms / 1e3, c.min_chunk, max_chunk=max(n, c.min_chunk))
        stages = pool.layout.spp
        # the short requests decode through the whole prefill and a few steps past it
        co_new = len(sched.chunks) + 2 * stages + 4
        longest = max(n + 4, c.mixed_prompt_tokens + co_new)
        spec = GenerateSpec(c.model, random_prompt(n, ctx.seed, self._vocab), sched.chunks, 4, self._per_rank(pool.layout.kvp, longest),
                            c.block_size, ctx.seed, c.threads_per_rank, co_prompts=shorts, co_new_tokens=co_new)
        with ctx.window("generate") as w:
            res = pool.run(spec)
        rec = w.fields()
        during_ms = [t * 1e3 for t in res.co_tbt_during_prefill_s]
        slo = c.tbt_slo_ms
        rec.set("ttft_ms", res.ttft_s * 1e3)
        rec.derive("prefill_throughput_tok_s", lambda t: n / (t / 1e3) if t > 0 else None, "ttft_ms", formula="context / TTFT")
        none = "no co-batched decode token was produced while the long prompt prefilled"
        rec.set("p50_tbt_ms", percentile(during_ms, 50), reason=none)
        rec.set("p99_tbt_ms", percentile(during_ms, 99), reason=none)
        rec.set("max_tbt_ms", max(during_ms) if during_ms else None, reason=none)
        rec.set("tbt_slo_attainment_frac", sum(t <= slo for t in during_ms) / len(during_ms) if during_ms else None, reason=none)
        rec.set("tbt_slo_ms", slo)
        rec.set("chunk_count", len(sched.chunks))
        rec.set("mean_chunk_tokens", statistics.fmean(sched.chunks))
        rec.set("over_budget_chunk_count", sched.over_budget)
        if params["chunk"] == "adaptive":
            # how well the budget's predictor knew this machine (mean |predicted - measured| / measured)
            rec.set("mean_predictor_error_frac", self._predictor_error, "profiled iterations of the prepare phase",
                    reason="the predictor's samples carry no fit error")
        if sched.over_budget:
            rec.warn(f"{sched.over_budget} chunk(s) of {params['chunk']}: not even --min-chunk {c.min_chunk} fit the "
                     f"{slo:g} ms budget under the predictor; the minimum chunk ran anyway")
        self._common_fields(rec, params, res, ctx)
        self._tables(params, res, sched.chunks, sched.contexts, sched.predicted_s, ctx)
        import pandas as pd

        rows = [{"parallel": params["parallel"], "chunk": params["chunk"], "request": i, "token": j + 1, "tbt_ms": g * 1e3}
                for i, gaps in enumerate(res.co_tbt_s) for j, g in enumerate(gaps)]
        if rows:
            ctx.store.append_table("tbt_timeline", pd.DataFrame(rows))
        return rec

    def _common_fields(self, rec: Record, params: dict[str, Any], res: Any, ctx: Context) -> None:
        """Memory per rank and communication per step (counted, not timed)."""
        lay = ctx.resource.layout
        rec.update({"model": self.cfg.model, "tp": lay.tp, "spp": lay.spp, "kvp": lay.kvp, "world": lay.world})
        kv = list(res.kv_bytes_per_rank)
        rec.set("max_kv_bytes", max(kv) if kv else None, COUNTED, reason="the ranks reported no KV bytes")
        rec.set("max_weight_bytes", float(max(_weight_bytes(self.cfg.model, lay, r) for r in range(lay.world))), COUNTED)
        for kind in COMM_KINDS:
            per = res.comm_bytes_per_step
            rec.set(f"mean_{kind}_comm_bytes", float(per.get(kind, 0.0)), COUNTED)
            rec.set(f"mean_prefill_{kind}_comm_bytes", float(per.get(f"prefill_{kind}", 0.0)), COUNTED)

    def _tables(self, params: dict[str, Any], res: Any, chunks: list[int], contexts: list[int], predicted: list[Any], ctx: Context) -> None:
        import pandas as pd

        lay = ctx.resource.layout
        base = {"parallel": params["parallel"], "workload": params["workload"], "chunk": params["chunk"], "context": int(params["context"])}
        times = list(res.chunk_times_s) + [None] * max(0, len(chunks) - len(res.chunk_times_s))
        ctx.store.append_table("chunks", pd.DataFrame([
            {**base, "step": i, "kv_context_tokens": k, "chunk_tokens": n, "predicted_ms": None if p is None else p * 1e3,
             "stage0_ms": None if t is None else t * 1e3}
            for i, (n, k, p, t) in enumerate(zip(chunks, contexts, predicted, times))]))
        ctx.store.append_table("memory", pd.DataFrame([
            {**base, "rank": r, "kv_tokens": int(tok), "kv_bytes": int(b), "weight_bytes": _weight_bytes(self.cfg.model, lay, r)}
            for r, (tok, b) in enumerate(zip(res.kv_tokens_per_rank, res.kv_bytes_per_rank))]))
        ctx.store.append_table("comm", pd.DataFrame([
            {**base, "kind": k, "bytes_per_step": float(v)} for k, v in sorted(res.comm_bytes_per_step.items())]))

    def finalize(self, store: Any, ctx: Context) -> dict[str, Any]:
        """Measured ratios, the calibrated projection and the paper's numbers (named tables)."""
        from charbench.workloads.long_context.analysis import summarize

        return summarize(store, self.cfg)


def _cumsum(xs: list[int]) -> list[int]:
    out, s = [], 0
    for x in xs:
        s += x
        out.append(s)
    return out


def _sample(d: dict[str, Any]) -> Any:
    from charbench.engine.adaptive_chunking import IterationSample

    return IterationSample(**d)


def _weight_bytes(model: str, layout: Any, rank: int) -> int:
    """fp32 weight bytes rank ``rank`` holds: its stage's layers / tp, the embedding, the head on the last stage."""
    from charbench.engine.runner import resolve_model_config

    cfg = resolve_model_config(model)
    spp_i, _, _ = layout.coords(rank)
    layers = len(layout.stage_layers(cfg.num_layers, spp_i))
    h, kv = cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim
    q = cfg.num_heads * cfg.head_dim
    per_layer = (h * (q + 2 * kv) + q * h + 3 * h * cfg.intermediate_size) // layout.tp + 2 * h
    embed = cfg.vocab_size * h
    head = 0 if cfg.tie_word_embeddings or spp_i < layout.spp - 1 else cfg.vocab_size * h
    return 4 * (layers * per_layer + embed + head + (h if spp_i == layout.spp - 1 else 0))
