"""``charbench serve-sweep``: options -> config -> run -> report (thin; the study is in run.py)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from charbench.config import CommonOptions
from charbench.cli_common import given_options, run_and_emit, study_inputs, with_common_options
from charbench.errors import ConfigError

if TYPE_CHECKING:
    from charbench.workloads.serving.config import ServeSweepConfig

app = typer.Typer(add_completion=False)

Str = Optional[str]
Flt = Optional[float]
Int = Optional[int]


def _opt(name: str, help_text: str) -> Any:
    return typer.Option(name, help=help_text)


PresetOpt = Annotated[str, _opt("--preset", "quick (default: tiny engine on CPU) or greener-llms (GPU knob study).")]
TargetOpt = Annotated[Str, _opt("--target", "'engine' (built-in, in process) or an OpenAI-compatible base URL, e.g. http://127.0.0.1:8000.")]
ModeOpt = Annotated[Str, _opt("--mode", "grid (explicit knobs), sweep (sync, max throughput, rates between) or slo-search.")]
ApiOpt = Annotated[Str, _opt("--api", "completions (default) or chat (URL targets).")]
ModelOpt = Annotated[Str, _opt("--model", "Built-in model(s): preset names or checkpoint folders, comma-separated; for a URL the served model name.")]
ArrivalOpt = Annotated[Str, _opt("--arrival", "poisson, gamma, constant, closed (fixed concurrency) or trace (Azure CSV).")]
RateOpt = Annotated[Str, _opt("--request-rate", "Request rates in req/s, comma-separated; inf = all at once.")]
ConcOpt = Annotated[Str, _opt("--concurrency", "Closed-loop users per point, comma-separated (with --arrival closed).")]
BurstOpt = Annotated[Flt, _opt("--burstiness", "Gamma shape: 1 = Poisson, < 1 burstier, > 1 smoother.")]
MaxConcOpt = Annotated[Int, _opt("--max-concurrency", "Cap on requests in flight (open loop).")]
RampOpt = Annotated[Flt, _opt("--ramp-up-s", "Ramp the rate linearly from --ramp-start-rps over this many seconds.")]
RampStartOpt = Annotated[Flt, _opt("--ramp-start-rps", "Rate at the start of the ramp (default 0).")]
NoRescaleOpt = Annotated[bool, _opt("--no-rescale", "Do not rescale arrival gaps so N requests span N/rate.")]
NumReqOpt = Annotated[Int, _opt("--num-requests", "Measured requests per load (trace: at most this many).")]
WarmupOpt = Annotated[Int, _opt("--warmup-requests", "Unmeasured requests before each point.")]
LenDistOpt = Annotated[Str, _opt("--length-dist", "fixed, uniform, normal, zipf, azure-conv or azure-code.")]
InLenOpt = Annotated[Str, _opt("--input-len", "Input lengths in tokens, comma-separated.")]
OutLenOpt = Annotated[Str, _opt("--output-len", "Output lengths in tokens, comma-separated.")]
RangeOpt = Annotated[Flt, _opt("--range-ratio", "uniform: half-width as a fraction of the length.")]
StdOpt = Annotated[Flt, _opt("--std-ratio", "normal: standard deviation as a fraction of the length.")]
ZipfOpt = Annotated[Flt, _opt("--zipf-alpha", "zipf: exponent.")]
LenScaleOpt = Annotated[Flt, _opt("--length-scale", "Multiply azure-*/trace lengths (fit a small model's context).")]
TraceOpt = Annotated[Optional[Path], _opt("--trace", "Azure LLM inference trace CSV (TIMESTAMP, ContextTokens, GeneratedTokens).")]
TimeScaleOpt = Annotated[Flt, _opt("--time-scale", "Multiply trace times (0.5 = replay twice as fast).")]
TraceStartOpt = Annotated[Flt, _opt("--trace-start", "Replay from this many seconds after the trace's first request.")]
TraceDurOpt = Annotated[Flt, _opt("--trace-duration", "Replay this many trace seconds.")]
MnsOpt = Annotated[Str, _opt("--max-num-seqs", "Engine batch limits, comma-separated (restart per value).")]
TpOpt = Annotated[Str, _opt("--tp", "Tensor-parallel degrees, comma-separated (restart per value).")]
DtypeOpt = Annotated[Str, _opt("--dtype", "fp32, bf16, fp16 (comma-separated; restart per value).")]
MnbtOpt = Annotated[Int, _opt("--max-num-batched-tokens", "Engine per-iteration token budget.")]
KvOpt = Annotated[Flt, _opt("--kv-cache-gb", "Engine KV-cache size in GiB.")]
MmlOpt = Annotated[Int, _opt("--max-model-len", "Engine longest prompt + output.")]
FreqOpt = Annotated[Str, _opt("--sm-freq", "SM clocks to lock, MHz, comma-separated (GPU, root; restored afterwards).")]
PlOpt = Annotated[Str, _opt("--power-limit", "GPU power limits, W, comma-separated (root; restored afterwards).")]
SloOpt = Annotated[Str, _opt("--slo", "Objectives, e.g. ttft_ms=500,tpot_ms=50,e2el_ms=10000.")]
AttOpt = Annotated[Flt, _opt("--slo-attainment", "Fraction of requests that must meet the SLOs (default 0.9).")]
SweepRatesOpt = Annotated[Int, _opt("--sweep-rates", "sweep mode: rates between synchronous and max throughput.")]
ItersOpt = Annotated[Int, _opt("--search-iters", "slo-search: bisection steps.")]
TimeoutOpt = Annotated[Flt, _opt("--request-timeout", "Per-request timeout in s (timeouts are counted, not fatal).")]
MaxDurOpt = Annotated[Flt, _opt("--max-duration", "Stop sending a load's requests after this many seconds (the point records truncated=true).")]
PromptFmtOpt = Annotated[Str, _opt("--prompt-format", "auto, ids (token-id prompts) or text.")]
TokOpt = Annotated[Str, _opt("--tokenizer", "Tokenizer for a URL target: tokenizer.json, checkpoint folder or charbench preset.")]
ForceOpt = Annotated[Optional[bool], typer.Option("--force-output-len/--no-force-output-len", help="Send ignore_eos/min_tokens to force output lengths.")]
ParetoOpt = Annotated[Str, _opt("--pareto-latency", "Latency axis of the Pareto plot: ttft, tpot or e2el.")]
ProfileOpt = Annotated[Optional[Path], _opt("--export-profile", "Write the measured profile for `charbench cluster-sim` (.json or .csv).")]


def parse_floats(text: str, option: str) -> list[float]:
    """``1,2.5,inf`` -> floats.

    Raises:
        ConfigError: a value that is not a number.
    """
    from charbench.workloads.serving.config import MAX_RATE

    out = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        try:
            # "inf" is the one spelling of max throughput (config.json, point keys and reports say it too)
            out.append(math.inf if part.lower() == MAX_RATE else float(part))
        except ValueError:
            raise ConfigError(f"{option}: {part!r} is not a number; e.g. {option} 1,4,inf") from None
    if not out:
        raise ConfigError(f"{option}: empty list")
    return out


def parse_ints(text: str, option: str) -> list[int]:
    """``1,2,4`` -> ints.

    Raises:
        ConfigError: a value that is not an integer.
    """
    out = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        try:
            out.append(int(part))
        except ValueError:
            raise ConfigError(f"{option}: {part!r} is not an integer; e.g. {option} 8,32") from None
    if not out:
        raise ConfigError(f"{option}: empty list")
    return out


def parse_slo(text: str) -> dict[str, float]:
    """``ttft_ms=500,tpot_ms=50`` (also ``ttft:500`` as in vLLM's --goodput) -> field values.

    Raises:
        ConfigError: an unknown metric or a non-numeric value.
    """
    out: dict[str, float] = {}
    for part in (p.strip() for p in text.replace(" ", ",").split(",") if p.strip()):
        sep = "=" if "=" in part else ":"
        name, _, value = part.partition(sep)
        name = name.strip().lower().removesuffix("_ms")
        if name not in ("ttft", "tpot", "e2el") or not value:
            raise ConfigError(f"--slo: {part!r} is not METRIC=MS with METRIC one of ttft_ms, tpot_ms, e2el_ms; e.g. --slo ttft_ms=500,tpot_ms=50")
        try:
            out[f"slo_{name}_ms"] = float(value)
        except ValueError:
            raise ConfigError(f"--slo: {value!r} in {part!r} is not a number of milliseconds") from None
    if not out:
        raise ConfigError("--slo: empty; e.g. --slo ttft_ms=500,tpot_ms=50")
    return out


@app.command("serve-sweep")
@with_common_options
def serve_sweep(
    ctx: typer.Context,
    preset: PresetOpt = "quick",
    target: TargetOpt = None,
    mode: ModeOpt = None,
    api: ApiOpt = None,
    model: ModelOpt = None,
    arrival: ArrivalOpt = None,
    request_rate_rps: RateOpt = None,
    concurrency: ConcOpt = None,
    burstiness: BurstOpt = None,
    max_concurrency: MaxConcOpt = None,
    ramp_up_s: RampOpt = None,
    ramp_start_rps: RampStartOpt = None,
    no_rescale: NoRescaleOpt = False,
    num_requests: NumReqOpt = None,
    warmup_requests: WarmupOpt = None,
    length_dist: LenDistOpt = None,
    input_len: InLenOpt = None,
    output_len: OutLenOpt = None,
    range_ratio: RangeOpt = None,
    std_ratio: StdOpt = None,
    zipf_alpha: ZipfOpt = None,
    length_scale: LenScaleOpt = None,
    trace: TraceOpt = None,
    time_scale: TimeScaleOpt = None,
    trace_start: TraceStartOpt = None,
    trace_duration: TraceDurOpt = None,
    max_num_seqs: MnsOpt = None,
    tp: TpOpt = None,
    dtype: DtypeOpt = None,
    max_num_batched_tokens: MnbtOpt = None,
    kv_cache_gb: KvOpt = None,
    max_model_len: MmlOpt = None,
    sm_freq: FreqOpt = None,
    power_limit: PlOpt = None,
    slo: SloOpt = None,
    slo_attainment: AttOpt = None,
    sweep_rates: SweepRatesOpt = None,
    search_iters: ItersOpt = None,
    request_timeout: TimeoutOpt = None,
    max_duration: MaxDurOpt = None,
    prompt_format: PromptFmtOpt = None,
    tokenizer: TokOpt = None,
    force_output_len: ForceOpt = None,
    pareto_latency: ParetoOpt = None,
    export_profile: ProfileOpt = None,
    *,
    common: CommonOptions,
) -> None:
    """LLM serving latency, throughput, power and energy across knobs.

    With no options on a CPU-only machine: the quick preset sweeps the tiny built-in engine
    (three loads x two max_num_seqs) and writes a report. See `charbench serve-sweep --help`
    and the examples in charbench.workloads.serving.
    """
    from charbench.workloads.serving.config import PRESETS, ServeSweepConfig
    from charbench.workloads.serving.run import ServeSweepStudy

    changes: dict[str, Any] = {}
    if target is not None:
        changes["target"] = target.strip()
    for key, value in (("mode", mode), ("api", api), ("arrival", arrival), ("length_dist", length_dist),
                       ("prompt_format", prompt_format), ("tokenizer", tokenizer), ("pareto_latency", pareto_latency)):
        if value is not None:
            changes[key] = value.strip()
    if model is not None:
        changes["model"] = [m.strip() for m in model.split(",") if m.strip()]
    if request_rate_rps is not None:
        changes["request_rate_rps"] = parse_floats(request_rate_rps, "--request-rate")
    if concurrency is not None:
        changes["concurrency"] = parse_ints(concurrency, "--concurrency")
    for key, text, opt in (("input_len", input_len, "--input-len"), ("output_len", output_len, "--output-len"),
                           ("max_num_seqs", max_num_seqs, "--max-num-seqs"), ("tp", tp, "--tp"), ("sm_freq_mhz", sm_freq, "--sm-freq")):
        if text is not None:
            changes[key] = parse_ints(text, opt)
    if power_limit is not None:
        changes["power_limit_w"] = parse_floats(power_limit, "--power-limit")
    if dtype is not None:
        changes["dtype"] = [d.strip() for d in dtype.split(",") if d.strip()]
    for key, value in (("burstiness", burstiness), ("max_concurrency", max_concurrency), ("ramp_up_s", ramp_up_s),
                       ("ramp_start_rps", ramp_start_rps), ("num_requests", num_requests), ("warmup_requests", warmup_requests),
                       ("range_ratio", range_ratio), ("std_ratio", std_ratio), ("zipf_alpha", zipf_alpha),
                       ("length_scale", length_scale), ("time_scale", time_scale), ("trace_start_s", trace_start),
                       ("trace_duration_s", trace_duration), ("max_num_batched_tokens", max_num_batched_tokens),
                       ("kv_cache_gb", kv_cache_gb), ("max_model_len", max_model_len), ("slo_attainment", slo_attainment),
                       ("sweep_rates", sweep_rates), ("search_iters", search_iters), ("request_timeout_s", request_timeout),
                       ("max_duration_s", max_duration),
                       ("force_output_len", force_output_len)):
        if value is not None:
            changes[key] = value
    if no_rescale:
        changes["rescale_arrivals"] = False
    if trace is not None:
        changes["trace_file"] = str(trace)
        changes.setdefault("arrival", "trace")
    if slo is not None:
        changes.update(parse_slo(slo))
    if export_profile is not None:
        changes["export_profile"] = str(export_profile)

    # preset + --config + these options (type and range checked), or with --resume the run's saved config
    inputs = study_inputs(PRESETS, preset, common, changes, study="serve-sweep", given=given_options(ctx),
                          fill_preset=_url_defaults, from_saved=ServeSweepConfig.from_dict)
    cfg, common = inputs.cfg, inputs.common
    if (cfg.sm_freq_mhz or cfg.power_limit_w or cfg.kv_cache_gb is not None) and common.resume is None:
        from charbench.device import check_fits_memory, resolve_device

        dev = resolve_device(common.device)
        if (cfg.sm_freq_mhz or cfg.power_limit_w) and not dev.startswith("cuda"):
            raise ConfigError("--sm-freq/--power-limit need a GPU; run with --device cuda (or drop them)")
        if cfg.kv_cache_gb is not None and not cfg.is_url:  # before the engine allocates it
            check_fits_memory(cfg.kv_cache_gb, dev, "--kv-cache-gb")
    run_and_emit(ServeSweepStudy(cfg), inputs)


def _url_defaults(cfg: ServeSweepConfig, changes: dict[str, Any]) -> dict[str, Any]:
    """``changes`` plus empty engine knobs for a URL target, when starting from a preset.

    A server's model, batch limit, tp and dtype are whatever it was started with: unknown
    unless given (a preset's engine values would be wrong, and a list would need restarts).
    """
    if changes.get("target", cfg.target) != "engine":
        for key in ("model", "max_num_seqs", "tp", "dtype"):
            changes.setdefault(key, [])
    return changes
