"""The cache-reuse study: per model pair, every reuse mode's quality, prefill time and bytes.

Points are ``(pair, mode, setting)``; ``pair`` is the resource group (two engines). For each
pair: full recompute (the receiver's own quality and the baseline time), full KV reuse,
DroidSpeak over every contiguous group ``[a, b]`` (the profile), reuse of one layer's K/V
only (per-layer criticality), and CacheBlend at budgets of 1..L-1 layers. Each point scores
the profiling set and the held-out set and times the receiver's context preparation inside
the ``prefill`` window::

    result = run_study(CacheReuseStudy(validate(cfg), "cpu"), common, settings)
"""

from __future__ import annotations

import hashlib
import statistics
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from typing import Any

from charbench.study import Context, Study
from charbench.workloads.cache_reuse import STUDY
from charbench.workloads.cache_reuse.config import CacheReuseConfig
from charbench.workloads.cache_reuse.pair import (
    LONGBENCH_PROMPT, Item, Mode, PairRuntime, make_items, read_jsonl, tile_context,
)
from charbench.workloads.cache_reuse.profiler import contiguous_groups
from charbench.workloads.cache_reuse.train import ROLE_TASKS, TrainSpec, build_pairs

SHIPPED_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json")
REAL_PAIR = "custom"
NOT_BLEND = "only CacheBlend recomputes a subset of the tokens"


def shipped_dir() -> Any:
    """The package-data folder of the shipped default checkpoints."""
    return resources.files("charbench.workloads.cache_reuse") / "data"


def materialize_shipped(out: Path) -> None:
    """Lay the shipped flat files out as one checkpoint folder per role under ``out``."""
    src = shipped_dir()
    for role in ROLE_TASKS:
        folder = out / role
        folder.mkdir(parents=True, exist_ok=True)
        for name in SHIPPED_FILES:
            (folder / name).write_bytes((src / name).read_bytes())
        (folder / "model.safetensors").write_bytes((src / f"{role}.safetensors").read_bytes())
    (out / "manifest.json").write_bytes((src / "manifest.json").read_bytes())


class CacheReuseStudy(Study):
    """DroidSpeak's modes on each model pair, one point per (pair, mode, setting)."""

    name = STUDY.command
    report_hook = STUDY.report_hook
    resource_knobs = ("pair",)

    def __init__(self, cfg: CacheReuseConfig, device: str) -> None:
        self.cfg = cfg
        self.device = device
        self.spec = TrainSpec()

    def _pairs(self) -> list[str]:
        return [REAL_PAIR] if self.cfg.sender is not None else list(self.cfg.pairs)

    def _num_layers(self) -> int:
        if self.cfg.sender is None:
            return self.spec.num_layers
        from charbench.engine.weights import config_from_checkpoint

        return config_from_checkpoint(self.cfg.receiver).num_layers

    def points(self) -> list[dict[str, Any]]:
        """Baseline first, then full reuse, the profile, criticality and CacheBlend, per pair."""
        n = self._num_layers()
        out: list[dict[str, Any]] = []
        for pair in self._pairs():
            modes = [("full_recompute", "-"), ("full_reuse", "-")]
            modes += [("droidspeak", f"{a}-{b}") for a, b in contiguous_groups(n, self.cfg.group_size)]
            modes += [("reuse_only", str(layer)) for layer in range(n)]
            modes += [("cacheblend", str(m)) for m in range(1, n)]
            out += [{"pair": pair, "mode": m, "setting": s} for m, s in modes]
        return out

    def prepare_inputs(self) -> Any:
        """The default pairs: the shipped checkpoints' digest, or the training spec with --retrain."""
        if self.cfg.sender is not None:
            return None
        if self.cfg.retrain:
            return {"pairs": "default", "retrain": True, "spec": asdict(self.spec)}
        digest = hashlib.sha256()
        for role in ROLE_TASKS:
            digest.update((shipped_dir() / f"{role}.safetensors").read_bytes())
        return {"pairs": "default", "retrain": False, "shipped_sha256": digest.hexdigest()}

    def prepare(self, cache_dir: Path, log: Any) -> None:
        """Train the default pairs (--retrain) or unpack the shipped ones into the cache."""
        if self.cfg.retrain:
            log("prepare: training the default pairs (base, all-blocks and middle-layers fine-tunes)")
            build_pairs(cache_dir, self.spec, log)
        else:
            materialize_shipped(cache_dir)

    def _items(self, pair: str, runtime: PairRuntime) -> tuple[list[Item], list[Item]]:
        cfg = self.cfg
        if pair == REAL_PAIR:
            records = read_jsonl(cfg.data)
            if cfg.heldout_data is not None:
                profile, heldout = records[: cfg.profile_count], read_jsonl(cfg.heldout_data)[: cfg.heldout_count]
            else:
                profile = records[: min(cfg.profile_count, max(1, len(records) // 2))]
                heldout = records[len(profile): len(profile) + cfg.heldout_count] or profile
            def mk(recs: list[dict[str, Any]]) -> list[Item]:
                return make_items(recs, runtime.tokenizer, cfg.max_context_tokens, cfg.metric,
                                  cfg.prompt or LONGBENCH_PROMPT)
            return mk(profile), mk(heldout)
        from charbench.workloads.cache_reuse.tasks import examples

        task = ROLE_TASKS[pair]
        def mk_task(count: int, facts: int, seed: int) -> list[Item]:
            recs = [e.to_record(task) for e in examples(task, count, facts, seed)]
            return make_items(recs, runtime.tokenizer, cfg.max_context_tokens, "f1")
        return mk_task(cfg.profile_count, self.spec.pairs, 100), mk_task(cfg.heldout_count, cfg.heldout_pairs, 200)

    def setup(self, ctx: Context) -> None:
        """Set the CPU thread count before any engine starts (``--cpu-threads``)."""
        from charbench.device import set_cpu_threads

        if (line := set_cpu_threads(self.device, self.cfg.cpu_threads)) is not None:
            ctx.log(line)

    def acquire(self, group: dict[str, Any], ctx: Context) -> dict[str, Any]:
        """Both engines of the pair and its tokenized profiling and held-out sets."""
        pair = group["pair"]
        if pair == REAL_PAIR:
            sender, receiver = str(self.cfg.sender), str(self.cfg.receiver)
        else:
            assert ctx.cache_dir is not None
            sender, receiver = str(ctx.cache_dir / "base"), str(ctx.cache_dir / pair)
        runtime = PairRuntime(pair, sender, receiver, self.device, self.cfg.dtype, self.cfg.max_new_tokens)
        try:
            profile, heldout = self._items(pair, runtime)
        except BaseException:
            runtime.close()
            raise
        timing = profile[: self.cfg.timing_count]
        if self.cfg.timing_tokens is not None:
            timing = [tile_context(it, self.cfg.timing_tokens) for it in timing]
        ctx.log(f"{pair}: {runtime.num_layers} layers, {len(profile)} profiling and {len(heldout)} held-out examples")
        return {"runtime": runtime, "profile": profile, "heldout": heldout, "timing": timing}

    def release(self, resource: Any, ctx: Context) -> None:
        """Shut both engines down."""
        if resource is not None:
            resource["runtime"].close()

    def run_point(self, params: dict[str, Any], ctx: Context) -> Any:
        """Time the receiver's context preparation (window ``prefill``), then score both sets."""
        res = ctx.resource
        rt: PairRuntime = res["runtime"]
        mode = Mode.parse(params["mode"], params["setting"])
        with ctx.window("prefill") as w:
            times_ms, recomputed_tokens = rt.prefill_times_ms(mode, "timing", res["timing"], self.cfg.timing_repeats)
        rec = w.fields()
        # the median resists a shared CPU's preemption spikes; speedups use it
        median_ms = float(statistics.median(times_ms))
        tokens = sum(len(it.context_ids) for it in res["timing"]) / len(res["timing"])
        e_bytes, kv_bytes = rt.bytes_moved(mode, tokens)
        rec.update({
            "quality_pct": rt.quality_pct(mode, "profile", res["profile"]),
            "heldout_quality_pct": rt.quality_pct(mode, "heldout", res["heldout"]),
            "mean_prefill_ms": statistics.fmean(times_ms), "median_prefill_ms": median_ms, "recomputed_layer_count": mode.recomputed_layers(rt.num_layers),
            "num_layers": rt.num_layers, "mean_context_tokens": tokens,
            "e_cache_bytes": e_bytes, "reused_kv_bytes": kv_bytes, "moved_bytes": e_bytes + kv_bytes,
        })
        rec.set("recomputed_token_count", recomputed_tokens if mode.kind == "cacheblend" else None, reason=NOT_BLEND)
        return rec

    def finalize(self, store: Any, ctx: Context) -> dict[str, Any]:
        """Per pair: receiver vs reuse quality, frontier, chosen group, held-out transfer, speedups, timeline."""
        from charbench.workloads.cache_reuse.analysis import summarize

        return summarize(store.results_frame(), self.cfg.tolerance, self.cfg.link_gbps)
