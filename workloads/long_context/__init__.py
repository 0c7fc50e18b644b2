"""Mnemosyne/Medha (Agrawal et al., arXiv 2409.17264): long-context inference with adaptive chunking, SPP and KVP.

Measures TTFT and TBT against context length and parallel layout (TP x SPP x KVP ranks on
gloo, CPU by default) on the built-in engine, a mixed workload (one long prefill arriving
while short requests decode) under adaptive, fixed and static-decreasing chunking against a
TBT SLO, and projects 1M-10M-token TTFT/TBT on Llama-3-8B/70B GPU clusters from an analytic
model calibrated by the measured parallel efficiencies (labeled projected)::

    charbench long-context                                  # quick: nano-long, 2K-32K, 1x1x1/kvp=2/spp=2, <= 5 min
    charbench long-context --context 4k,16k,32k --parallel 1x1x1,kvp=2,spp=2,tp=2xkvp=2
    charbench long-context --chunk fixed:512,adaptive,static-decreasing --tbt-slo-ms 50 --model tiny-long
    charbench long-context --preset paper

Modules: :mod:`.config` (options, presets), :mod:`.ranks` (one set of ranks per layout),
:mod:`.schedule` (chunk policies -> chunk lists), :mod:`.profile` (the adaptive predictor),
:mod:`.run` (the study), :mod:`.projection` and :mod:`.analysis` (calibrated projection,
paper numbers), :mod:`.figures` (report), :mod:`.cli`. The engine side is
:mod:`charbench.engine.lc_runner`, :mod:`~charbench.engine.kvp`, :mod:`~charbench.engine.parallel`.
"""

from charbench.studies import StudySpec

STUDY = StudySpec(
    command="long-context",
    help="Mnemosyne: TTFT/TBT vs context on TP x SPP x KVP layouts, adaptive chunking under a TBT SLO, 10M-token projection.",
    cli_module="charbench.workloads.long_context.cli",
    gates=("energy_j", "ttft_ms", "p99_tbt_ms"),
    fallback_gates=("ttft_ms", "p99_tbt_ms"),
    report_hook="charbench.workloads.long_context.figures:report_sections",
    metrics=("ttft_ms", "p50_tbt_ms", "p99_tbt_ms", "max_tbt_ms", "tbt_slo_attainment_frac", "prefill_throughput_tok_s", "chunk_count",
             "mean_chunk_tokens", "max_kv_bytes", "max_weight_bytes", "mean_kvp_comm_bytes", "mean_tp_comm_bytes", "mean_spp_comm_bytes"),
    # a point lasts seconds to minutes: a sample every 0.5 s
    settings={"*": {"sample_interval_s": 0.5}},
)
