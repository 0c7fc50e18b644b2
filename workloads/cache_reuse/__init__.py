"""DroidSpeak (Liu et al., arXiv 2411.02820): KV-cache and E-cache reuse between sibling fine-tuned LLMs.

A receiver model reuses the K/V cache and the per-layer input embeddings (E-cache) that a
sender fine-tuned from the same base computed for a shared context, recomputing only a
contiguous group of layers ``[a, b]``. The study profiles every group per model pair, picks
the cheapest within a tolerance of the receiver's own quality, checks the choice on a
held-out set, and measures prefill latency and bytes moved for full recompute, full KV
reuse, DroidSpeak and a two-model CacheBlend::

    charbench cache-reuse                                   # default CPU pairs (shipped), <= 10 min
    charbench cache-reuse --retrain                         # rebuild the default pairs into the cache
    charbench cache-reuse --sender ~/ckpt/llama-a --receiver ~/ckpt/llama-b --data hotpotqa.jsonl --device cuda
"""

from charbench.studies import StudySpec

STUDY = StudySpec(
    command="cache-reuse",
    help="DroidSpeak: reuse a sibling LLM's KV cache and E-cache, recompute a few layers (quality vs prefill time).",
    cli_module="charbench.workloads.cache_reuse.cli",
    gates=("mean_prefill_ms",),
    fallback_gates=("mean_prefill_ms",),
    report_hook="charbench.workloads.cache_reuse.figures:report_sections",
    metrics=(
        "quality_pct", "heldout_quality_pct", "mean_prefill_ms", "median_prefill_ms", "recomputed_layer_count", "recomputed_token_count",
        "e_cache_bytes", "reused_kv_bytes", "moved_bytes", "mean_context_tokens",
    ),
    # a point (profiling a pair, timing a mode) lasts seconds: a sample every 0.5 s
    settings={"*": {"sample_interval_s": 0.5}},
)
