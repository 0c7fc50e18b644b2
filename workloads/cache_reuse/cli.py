"""``charbench cache-reuse``: options -> config -> run -> report (thin; the study is in run.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from charbench.cli_common import CpuThreadsOpt, given_options, run_and_emit, study_inputs, with_common_options
from charbench.config import CommonOptions

app = typer.Typer(add_completion=False)

PresetOpt = Annotated[str, typer.Option("--preset", help="quick (default: shipped CPU pairs) or paper (50 contexts, 2-layer groups, 5%).")]
SenderOpt = Annotated[Optional[Path], typer.Option("--sender", help="Sender checkpoint folder (Hugging Face, local; never downloaded).")]
ReceiverOpt = Annotated[Optional[Path], typer.Option("--receiver", help="Receiver checkpoint folder (same architecture as --sender).")]
DataOpt = Annotated[Optional[Path], typer.Option("--data", help="LongBench-style JSONL (context, input, answers) for --sender/--receiver.")]
HeldoutOpt = Annotated[Optional[Path], typer.Option("--heldout-data", help="JSONL for the held-out transfer check (default: rest of --data).")]
MetricOpt = Annotated[Optional[str], typer.Option("--metric", help="f1, rouge_l or edit_sim (default: from each record's dataset).")]
PromptOpt = Annotated[Optional[str], typer.Option("--prompt", help="Query suffix with {input} (default: LongBench's QA form).")]
PairsOpt = Annotated[Optional[str], typer.Option("--pairs", help="Default pairs: all_blocks,middle (both by default).")]
RetrainOpt = Annotated[bool, typer.Option("--retrain", help="Rebuild the default pairs into the prepare cache (seeded).")]
ProfileOpt = Annotated[Optional[int], typer.Option("--profile-count", help="Profiling examples.")]
HeldoutCountOpt = Annotated[Optional[int], typer.Option("--heldout-count", help="Held-out examples.")]
GroupOpt = Annotated[Optional[int], typer.Option("--group-size", help="Layers per profiling group step (paper: 2).")]
TolOpt = Annotated[Optional[float], typer.Option("--tolerance", help="Chosen group within this fraction of the receiver (0.01 or 0.05).")]
RepeatsOpt = Annotated[Optional[int], typer.Option("--timing-repeats", help="Timed prefills per context and mode.")]
TimingOpt = Annotated[Optional[int], typer.Option("--timing-count", help="Contexts timed per mode.")]
NewOpt = Annotated[Optional[int], typer.Option("--max-new-tokens", help="Greedy answer tokens.")]
CtxOpt = Annotated[Optional[int], typer.Option("--max-context-tokens", help="Cut longer contexts in the middle.")]
TimingTokensOpt = Annotated[Optional[int], typer.Option("--timing-tokens", help="Tile timed contexts to this many tokens.")]
LinkOpt = Annotated[Optional[float], typer.Option("--link-gbps", help="Link bandwidth of the transfer timeline (Gb/s).")]
DtypeOpt = Annotated[Optional[str], typer.Option("--dtype", help="fp32, bf16 or fp16.")]


@app.command("cache-reuse")
@with_common_options
def cache_reuse(
    ctx: typer.Context,
    sender: SenderOpt = None,
    receiver: ReceiverOpt = None,
    data: DataOpt = None,
    heldout_data: HeldoutOpt = None,
    metric: MetricOpt = None,
    prompt: PromptOpt = None,
    pairs: PairsOpt = None,
    retrain: RetrainOpt = False,
    profile_count: ProfileOpt = None,
    heldout_count: HeldoutCountOpt = None,
    group_size: GroupOpt = None,
    tolerance: TolOpt = None,
    timing_repeats: RepeatsOpt = None,
    timing_count: TimingOpt = None,
    max_new_tokens: NewOpt = None,
    timing_tokens: TimingTokensOpt = None,
    max_context_tokens: CtxOpt = None,
    link_gbps: LinkOpt = None,
    dtype: DtypeOpt = None,
    cpu_threads: CpuThreadsOpt = None,
    preset: PresetOpt = "quick",
    *,
    common: CommonOptions,
) -> None:
    """DroidSpeak cross-model KV/E-cache reuse: profile layer groups, measure quality vs prefill time per mode.

    With no options: the two shipped CPU pairs (all-blocks and middle-layers fine-tunes of one base) on the
    synthetic retrieval tasks, in under 10 minutes on 2 cores. --sender/--receiver/--data run one real pair.
    """
    from charbench.config import parse_csv_list
    from charbench.device import resolve_device
    from charbench.workloads.cache_reuse.config import DEFAULT_PAIRS, PRESETS
    from charbench.workloads.cache_reuse.run import CacheReuseStudy

    options = {"sender": str(sender) if sender is not None else None, "receiver": str(receiver) if receiver is not None else None,
               "data": str(data) if data is not None else None, "heldout_data": str(heldout_data) if heldout_data is not None else None,
               "metric": metric, "prompt": prompt, "profile_count": profile_count, "heldout_count": heldout_count, "group_size": group_size,
               "tolerance": tolerance, "timing_repeats": timing_repeats, "timing_count": timing_count, "timing_tokens": timing_tokens,
               "max_new_tokens": max_new_tokens, "max_context_tokens": max_context_tokens, "link_gbps": link_gbps,
               "dtype": dtype, "cpu_threads": cpu_threads}
    changes: dict[str, object] = {k: v for k, v in options.items() if v is not None}
    if retrain:
        changes["retrain"] = True
    if pairs is not None:
        changes["pairs"] = parse_csv_list(pairs, "--pairs", DEFAULT_PAIRS, allow_all=False)
    inputs = study_inputs(PRESETS, preset, common, changes, study="cache-reuse", given=given_options(ctx), finish=_finish)
    run_and_emit(CacheReuseStudy(inputs.cfg, resolve_device(inputs.common.device)), inputs)


def _finish(cfg, common: CommonOptions):  # type: ignore[no-untyped-def]
    """Checks across options (the real-pair trio, files, names)."""
    from charbench.workloads.cache_reuse.config import validate

    return validate(cfg)
