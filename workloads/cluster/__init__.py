"""``charbench cluster-sim``: a profile-driven LLM cluster simulator with energy-aware policies.

Simulates a trace on a cluster of model instances (iteration-level batching, chunked prefill,
KV preemption, routing) with power from a profile, under four policies: ``static``
(DynamoLLM's baseline), ``dynamollm`` (pools + instance/tp/frequency control), ``polca``
(power oversubscription with frequency caps) and ``greener`` (best static knobs). Nothing
is measured: every value is simulated and labelled so. Examples::

    charbench cluster-sim                                   # quick: 1 h synthetic trace, all four policies
    charbench cluster-sim --preset dynamollm --duration 2h
    charbench cluster-sim --preset polca --polca-oversubscription 0.1,0.2,0.3,0.4
    charbench cluster-sim --trace AzureLLMInferenceTrace_conv_1week.csv --trace-start 3600 --duration 1h
    charbench cluster-sim --profile h100-profile.json --kv-capacity-tokens 400000 --model tiny
    charbench cluster-sim --policy-file my_policy.py --policies static,mine

Modules: :mod:`.config` (options, presets), :mod:`.traces` (workloads, carbon, prices),
:mod:`.run` (the study), :mod:`.analysis` (comparison, paper claims), :mod:`.figures`
(report), :mod:`.cli`. The simulator is :mod:`charbench.sim`.
"""

from charbench.studies import StudySpec

STUDY = StudySpec(
    command="cluster-sim",
    help="Simulate an LLM cluster's energy, carbon, cost and SLOs under DynamoLLM, POLCA, greener and static policies.",
    cli_module="charbench.workloads.cluster.cli",
    gates=("energy_kwh", "p99_ttft_ms", "p99_tbt_ms"),
    report_hook="charbench.workloads.cluster.figures:report_sections",
    metrics=("energy_kwh", "carbon_kgco2e", "cost_usd", "p50_ttft_ms", "p99_ttft_ms", "p50_tbt_ms", "p99_tbt_ms",
             "slo_attainment_frac", "p50_power_w", "p99_power_w", "max_power_w", "reconfiguration_count", "reconfiguration_energy_kwh"),
    # a simulator measures nothing: no sampler (the runner starts no meter, sampler or idle baseline for it either)
    settings={"*": {"sample_interval_s": 0.0}},
)
