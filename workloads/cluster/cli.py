"""``charbench cluster-sim``: options -> config -> run -> report (thin; the study is in run.py)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from charbench.config import CommonOptions
from charbench.cli_common import given_options, run_and_emit, study_inputs, with_common_options
from charbench.errors import ConfigError

app = typer.Typer(add_completion=False)

Str = Optional[str]
Flt = Optional[float]
Int = Optional[int]

_UNITS = {"s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str, option: str = "--duration") -> float:
    """``90``, ``90s``, ``30m``, ``1h``, ``7d`` -> seconds.

    Raises:
        ConfigError: not a number with an optional unit s, m, h or d.
    """
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(s|m|min|h|d)?\s*", text)
    if not m:
        raise ConfigError(f"{option}: {text!r} is not a duration; e.g. {option} 1h, 30m or 600")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def _floats(text: str, option: str) -> list[float]:
    try:
        out = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise ConfigError(f"{option}: {text!r} is not a comma-separated list of numbers; e.g. {option} 0.1,0.3") from None
    if not out:
        raise ConfigError(f"{option}: empty list")
    return out


def _o(name: str, help_text: str) -> Any:
    return typer.Option(name, help=help_text)


@app.command("cluster-sim")
@with_common_options
def cluster_sim(
    ctx: typer.Context,
    preset: Annotated[str, _o("--preset", "quick (default: 1 h synthetic trace, all four policies), dynamollm or polca.")] = "quick",
    trace: Annotated[Str, _o("--trace", "synthetic, or an Azure LLM inference trace CSV (2023 or 2024 format).")] = None,
    duration: Annotated[Str, _o("--duration", "Simulated span (synthetic) or trace window: 600, 30m, 1h, 7d.")] = None,
    trace_start: Annotated[Str, _o("--trace-start", "Trace window start after its first request: 0, 1h ...")] = None,
    time_scale: Annotated[Flt, _o("--time-scale", "Multiply trace times (0.5 = twice the load).")] = None,
    rate: Annotated[Flt, _o("--rate", "Synthetic trace: mean request rate in req/s.")] = None,
    peak_to_mean: Annotated[Flt, _o("--peak-to-mean", "Synthetic trace: daily peak rate / mean.")] = None,
    bursts_per_hour: Annotated[Flt, _o("--bursts-per-hour", "Synthetic trace: bursts per hour.")] = None,
    burst_factor: Annotated[Flt, _o("--burst-factor", "Synthetic trace: rate multiplier in a burst.")] = None,
    length_dist: Annotated[Str, _o("--length-dist", "Synthetic trace lengths: azure-conv or azure-code.")] = None,
    policies: Annotated[Str, _o("--policies", "Comma-separated: static,dynamollm,polca,greener (and --policy-file ones).")] = None,
    profile: Annotated[Str, _o("--profile", "a100, h100, h200 (analytic), a serve-sweep --export-profile file, or vidur:DIR (Vidur's MLP profile).")] = None,
    model: Annotated[Str, _o("--model", "Model: llama-2-7b, llama-2-13b, llama-2-70b, llama-3-8b, llama-3-70b (or the profile's).")] = None,
    kv_capacity_tokens: Annotated[Int, _o("--kv-capacity-tokens", "KV-cache tokens per instance (measured profiles).")] = None,
    tp: Annotated[Int, _o("--tp", "Static baseline's tensor parallelism.")] = None,
    instances: Annotated[Int, _o("--instances", "Static baseline's instances (default: enough for the trace's peak).")] = None,
    slo_ttft_ms: Annotated[Flt, _o("--slo-ttft-ms", "TTFT objective in ms.")] = None,
    slo_tbt_ms: Annotated[Flt, _o("--slo-tbt-ms", "TBT (time between tokens) objective in ms.")] = None,
    max_num_seqs: Annotated[Int, _o("--max-num-seqs", "Most sequences an instance runs at once.")] = None,
    chunk_tokens: Annotated[Int, _o("--chunk-tokens", "Tokens per iteration with prefill (chunked prefill).")] = None,
    routing: Annotated[Str, _o("--routing", "least-outstanding or round-robin (within a pool).")] = None,
    bin_s: Annotated[Flt, _o("--bin-s", "Timeline bin width in s.")] = None,
    spinup_s: Annotated[Flt, _o("--spinup-s", "Seconds a new instance loads weights before serving.")] = None,
    reshard_s: Annotated[Flt, _o("--reshard-s", "Seconds a tensor-parallel re-shard takes.")] = None,
    dyn_pools: Annotated[Str, _o("--dyn-pools", "DynamoLLM pools: io9, out3 or single.")] = None,
    predictor_accuracy: Annotated[Flt, _o("--predictor-accuracy", "DynamoLLM output-length class predictor accuracy (0-1).")] = None,
    polca_oversubscription: Annotated[Str, _o("--polca-oversubscription", "POLCA extra servers, comma-separated fractions (one point each).")] = None,
    polca_budget_w: Annotated[Flt, _o("--polca-budget-w", "POLCA power budget in W (default: static's provisioned power).")] = None,
    carbon_file: Annotated[Optional[Path], _o("--carbon-file", "Carbon intensity CSV with columns time_s,g_per_kwh.")] = None,
    gpu_price: Annotated[Flt, _o("--gpu-price", "USD per GPU-hour (default: built-in table).")] = None,
    electricity_price: Annotated[Flt, _o("--electricity-price", "USD per kWh.")] = None,
    policy_file: Annotated[Optional[Path], _o("--policy-file", "Python file that registers extra policies.")] = None,
    *,
    common: CommonOptions,
) -> None:
    """Simulate an LLM cluster's energy, carbon, cost and SLOs under several policies.

    With no options: a 1-hour synthetic conversation-like trace, llama-2-70b on the analytic
    H100 profile, policies static, dynamollm, polca and greener; a report compares them.
    """
    from charbench.workloads.cluster.config import PRESETS, ClusterSimConfig
    from charbench.workloads.cluster.run import ClusterSimStudy

    changes: dict[str, Any] = {}
    for key, value in (("trace", trace), ("length_dist", length_dist), ("profile", profile), ("model", model), ("routing", routing), ("dyn_pools", dyn_pools)):
        if value is not None:
            changes[key] = value.strip()
    if duration is not None:
        changes["duration_s"] = parse_duration(duration)
    if trace_start is not None:
        changes["trace_start_s"] = parse_duration(trace_start, "--trace-start")
    if policies is not None:
        changes["policies"] = [p.strip() for p in policies.split(",") if p.strip()]
    if polca_oversubscription is not None:
        changes["polca_oversubscription"] = _floats(polca_oversubscription, "--polca-oversubscription")
    for key, value in (("time_scale", time_scale), ("mean_rate_rps", rate), ("peak_to_mean", peak_to_mean), ("burst_per_h", bursts_per_hour),
                       ("burst_factor", burst_factor), ("kv_capacity_tokens", kv_capacity_tokens), ("tp", tp), ("instances", instances),
                       ("slo_ttft_ms", slo_ttft_ms), ("slo_tbt_ms", slo_tbt_ms), ("max_num_seqs", max_num_seqs), ("chunk_tokens", chunk_tokens),
                       ("bin_s", bin_s), ("spinup_s", spinup_s), ("reshard_s", reshard_s), ("predictor_accuracy", predictor_accuracy),
                       ("polca_budget_w", polca_budget_w), ("gpu_usd_per_h", gpu_price), ("electricity_usd_per_kwh", electricity_price)):
        if value is not None:
            changes[key] = value
    if carbon_file is not None:
        changes["carbon_file"] = str(carbon_file)
    if policy_file is not None:
        changes["policy_file"] = str(policy_file)
    if trace is not None and trace.strip() != "synthetic" and duration is None:
        changes["duration_s"] = None  # a trace file: to its end unless --duration is given
    inputs = study_inputs(PRESETS, preset, common, changes, study="cluster-sim", given=given_options(ctx))
    run_and_emit(ClusterSimStudy(inputs.cfg), inputs)
