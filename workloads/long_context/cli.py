"""``charbench long-context``: options -> config -> run -> report (thin; the study is in run.py)."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from charbench.cli_common import given_options, run_and_emit, study_inputs, with_common_options
from charbench.config import CommonOptions

app = typer.Typer(add_completion=False)

Str = Optional[str]
Flt = Optional[float]
Int = Optional[int]


def _o(name: str, help_text: str) -> Any:
    return typer.Option(name, help=help_text)


@app.command("long-context")
@with_common_options
def long_context(
    ctx: typer.Context,
    preset: Annotated[str, _o("--preset", "quick (default: nano-long, 2K-32K, 1x1x1/kvp=2/spp=2) or paper (tiny-long, 4K-64K, 4 layouts).")] = "quick",
    context: Annotated[Str, _o("--context", "Prefill-sweep prompt lengths, comma-separated: 4k,16k,32k (k = 1024, m = 1024^2).")] = None,
    parallel: Annotated[Str, _o("--parallel", "Layouts, comma-separated: TPxSPPxKVP (1x1x2) or key=n parts (1x1x1,kvp=2,spp=2,tp=2xkvp=2).")] = None,
    chunk: Annotated[Str, _o("--chunk", "Mixed-workload chunk policies, comma-separated: fixed:N, adaptive, static-decreasing[:MAX:MIN:STAGES:SPAN].")] = None,
    tbt_slo_ms: Annotated[Flt, _o("--tbt-slo-ms", "TBT SLO in ms (adaptive chunking's per-iteration budget).")] = None,
    model: Annotated[Str, _o("--model", "nano-long, tiny-long, small-long (random weights) or a local HF checkpoint folder (llama3 RoPE scaling read).")] = None,
    prefill_chunk: Annotated[Int, _o("--prefill-chunk", "Fixed chunk of the prefill sweep (tokens).")] = None,
    decode_steps: Annotated[Int, _o("--decode-steps", "Tokens generated after each sweep prefill.")] = None,
    mixed_context: Annotated[Str, _o("--mixed-context", "Long prompt of the mixed workload (tokens, 8k ...; 0 = no mixed points).")] = None,
    mixed_decodes: Annotated[Int, _o("--mixed-decodes", "Short requests decoding when the long prompt arrives.")] = None,
    mixed_prompt_tokens: Annotated[Int, _o("--mixed-prompt-tokens", "Prompt length of each short request.")] = None,
    min_chunk: Annotated[Int, _o("--min-chunk", "Smallest adaptive chunk (tokens).")] = None,
    max_tokens_per_rank: Annotated[Int, _o("--max-tokens-per-rank", "KV tokens per KVP rank and sequence (default: even split).")] = None,
    threads_per_rank: Annotated[Int, _o("--threads-per-rank", "Torch threads per rank process.")] = None,
    projection_contexts: Annotated[Str, _o("--projection-contexts", "Projection context lengths: 1m,2m,4m,10m.")] = None,
    projection_models: Annotated[Str, _o("--projection-models", "Projection models: llama-3-8b,llama-3-70b.")] = None,
    projection_gpus: Annotated[Str, _o("--projection-gpus", "Projection GPUs: a100,h100,h200.")] = None,
    *,
    common: CommonOptions,
) -> None:
    """Mnemosyne long-context inference: TTFT/TBT vs context and TP x SPP x KVP layout, adaptive chunking, projection.

    With no options: the nano-long model (random weights) on CPU gloo ranks, prompts of 2K, 8K
    and 32K tokens on layouts 1x1x1, kvp=2 and spp=2, and an 8K prompt arriving while 8 short
    requests decode under adaptive and fixed:2048 chunking (TBT SLO 50 ms); the report adds a
    projection to 1M-10M tokens on Llama-3-8B/70B clusters (projected, not measured).
    """
    from charbench.workloads.long_context.config import PRESETS, parse_token_list, parse_tokens

    changes: dict[str, Any] = {}
    if context is not None:
        changes["contexts"] = parse_token_list(context, "--context")
    if projection_contexts is not None:
        changes["projection_contexts"] = parse_token_list(projection_contexts, "--projection-contexts")
    if mixed_context is not None:
        changes["mixed_context"] = parse_tokens(mixed_context, "--mixed-context")
    for key, text in (("parallel", parallel), ("chunk", chunk), ("projection_models", projection_models), ("projection_gpus", projection_gpus)):
        if text is not None:
            changes[key] = [p.strip() for p in text.split(",") if p.strip()]
    if model is not None:
        changes["model"] = model.strip()
    for key, value in (("tbt_slo_ms", tbt_slo_ms), ("prefill_chunk", prefill_chunk), ("decode_steps", decode_steps),
                       ("mixed_decodes", mixed_decodes), ("mixed_prompt_tokens", mixed_prompt_tokens), ("min_chunk", min_chunk),
                       ("max_tokens_per_rank", max_tokens_per_rank), ("threads_per_rank", threads_per_rank)):
        if value is not None:
            changes[key] = value
    inputs = study_inputs(PRESETS, preset, common, changes, study="long-context", given=given_options(ctx), finish=_finish)
    from charbench.workloads.long_context.run import LongContextStudy

    run_and_emit(LongContextStudy(inputs.cfg), inputs)


def _finish(cfg, common: CommonOptions):  # type: ignore[no-untyped-def]
    """Checks across options (layouts, chunk policies, model, fits)."""
    from charbench.workloads.long_context.config import validate

    return validate(cfg)
