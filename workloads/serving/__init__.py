"""``charbench serve-sweep``: LLM serving latency, throughput, power and energy across knobs.

Reproduces the serving-side measurements of vLLM's ``bench serve`` (TTFT, TPOT, ITL, E2EL,
goodput under SLOs), GuideLLM's sweep, and the ML.ENERGY benchmark's steady-state energy,
and adds GPU-frequency and power-limit axes (the knobs of "Towards Greener LLMs" and
DynamoLLM). Targets are the built-in engine in process (default) or any OpenAI-compatible
server. Examples::

    charbench serve-sweep                                      # quick preset: tiny engine on CPU
    charbench serve-sweep --request-rate 1,4,16 --max-num-seqs 8,32 --slo ttft_ms=500,tpot_ms=50
    charbench serve-sweep --mode sweep --sweep-rates 5         # sync, max throughput, 5 rates between
    charbench serve-sweep --mode slo-search --slo ttft_ms=300,tpot_ms=40
    charbench serve-sweep --arrival gamma --burstiness 0.5 --request-rate 8
    charbench serve-sweep --arrival closed --concurrency 1,4,16
    charbench serve-sweep --arrival trace --trace AzureLLMInferenceTrace_conv.csv \\
        --time-scale 0.5 --trace-start 600 --trace-duration 60
    charbench serve-sweep --length-dist azure-conv --length-scale 0.25
    charbench serve-sweep --target http://127.0.0.1:8000 --request-rate 2,8   # `charbench serve` elsewhere
    charbench serve-sweep --preset greener-llms --device cuda --export-profile h100.json
    charbench serve-sweep --device cuda --sm-freq 1200,1600,1980 --power-limit 400,700

Modules: :mod:`.config` (options, presets), :mod:`.arrivals`, :mod:`.lengths`,
:mod:`.traces` (Azure CSV), :mod:`.prompts`, :mod:`.client` (engine / HTTP targets),
:mod:`.loadgen`, :mod:`.metrics`, :mod:`.modes`, :mod:`.run` (the study),
:mod:`.profile` (records -> cluster-sim profile entries; the format is
:mod:`charbench.profiles`), :mod:`.figures` (report), :mod:`.cli`.
"""

from charbench.studies import StudySpec

STUDY = StudySpec(
    command="serve-sweep",
    help="LLM serving latency, throughput, power and energy across knobs.",
    cli_module="charbench.workloads.serving.cli",
    gates=("p99_ttft_ms", "p99_tpot_ms", "energy_per_output_token_j"),
    report_hook="charbench.workloads.serving.figures:report_sections",
    metrics=(
        "request_throughput_rps", "request_goodput_rps", "output_throughput_tok_s", "total_token_throughput_tok_s",
        *(f"{s}_{m}_ms" for m in ("ttft", "tpot", "itl", "e2el") for s in ("median", "p90", "p99")),
        "energy_per_output_token_j", "energy_per_request_j", "steady_energy_per_output_token_j", "mean_steady_power_w",
    ),
    # the presets' idle baselines (net energy per token) and the paper preset's cooldown between engine configurations
    settings={"quick": {"idle_baseline_s": 1.0}, "greener-llms": {"idle_baseline_s": 10.0, "cooldown_s": 5.0}},
)
