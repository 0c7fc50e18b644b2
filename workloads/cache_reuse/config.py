"""Configuration of ``charbench cache-reuse``: a typed dataclass and its presets.

``quick`` (the default) runs both shipped CPU pairs (``all_blocks``: every block
fine-tuned, DroidSpeak's hard case; ``middle``: layers 2-3 only, its favourable case) on the
synthetic task family; ``--sender/--receiver/--data`` select one real pair and a
LongBench-style JSONL file instead (``paper`` sets the paper's 50 profiling contexts,
2-layer groups and 5% tolerance)::

    cfg = select_preset(PRESETS, "quick")
"""

from __future__ import annotations

from dataclasses import dataclass, field

from charbench.config import check, validate_fields
from charbench.errors import ConfigError

DEFAULT_PAIRS = ["all_blocks", "middle"]


@dataclass
class CacheReuseConfig:
    """What ``charbench cache-reuse`` runs.

    Attributes:
        preset: the preset this config started from.
        pairs: default pairs to run (``all_blocks``, ``middle``); ignored with ``--sender``.
        sender: a local Hugging Face checkpoint folder (the sender), or None for the defaults.
        receiver: the receiver's checkpoint folder (same architecture as the sender).
        data: a LongBench-style JSONL file (``context``, ``input``, ``answers``) for real pairs.
        heldout_data: a second JSONL file for the transfer check (default: the second half of ``data``).
        metric: ``f1``, ``rouge_l`` or ``edit_sim``; None picks it from each record's ``dataset``
            (LongBench's mapping; f1 otherwise).
        prompt: the query suffix for ``--data`` records, with ``{input}``; None is LongBench's QA
            form ``"\\n\\nQuestion: {input}\\nAnswer:"``.
        retrain: rebuild the default pairs into the prepare cache instead of using the shipped ones.
        profile_count: profiling examples (the paper: 50 HotpotQA contexts).
        heldout_count: held-out examples for the transfer check.
        heldout_pairs: facts per context of the default held-out set (another length than profiled).
        group_size: layers per profiling group step (1 = every group; the paper's evaluation: 2).
        tolerance: the chosen group's quality is within this fraction of the receiver's.
        timing_repeats: timed prefills of each timing context per mode.
        timing_count: contexts timed per mode.
        timing_tokens: timed contexts are profiling contexts tiled to this many tokens (the
            synthetic ones are short enough for per-call overhead to hide the per-layer cost;
            the default models take 4096 positions);
            None times the profiling contexts as they are (the ``paper`` preset).
        max_new_tokens: greedy tokens generated per answer (the synthetic answers are one word).
        max_context_tokens: longer contexts are cut in the middle (LongBench's truncation).
        link_gbps: link bandwidth of the transfer timeline (the paper's nodes: 200 Gb/s InfiniBand).
        dtype: model dtype (fp32, bf16, fp16).
        cpu_threads: torch threads on a CPU device (None: torch's default). The quick preset
            uses 1: its prefills take 4-40 ms, and with two threads their timings scatter
            enough to move a one-layer speedup by 20% (measured: 4.97x vs 5.7x with one).

    The runner settings (sampler every 0.5 s) are the spine's: ``STUDY.settings`` in ``__init__.py``.
    """

    preset: str = "quick"
    pairs: list[str] = field(default_factory=lambda: list(DEFAULT_PAIRS))
    sender: str | None = None
    receiver: str | None = None
    data: str | None = None
    heldout_data: str | None = None
    metric: str | None = None
    prompt: str | None = None
    retrain: bool = False
    profile_count: int = field(default=200, metadata=check("--profile-count", ge=1, le=100_000))
    heldout_count: int = field(default=200, metadata=check("--heldout-count", ge=1, le=100_000))
    heldout_pairs: int = field(default=10, metadata=check("--heldout-pairs", ge=2, le=32))
    group_size: int = field(default=1, metadata=check("--group-size", ge=1, le=1024))
    tolerance: float = field(default=0.01, metadata=check("--tolerance", ge=0, lt=1))
    timing_repeats: int = field(default=5, metadata=check("--timing-repeats", ge=1, le=10_000))
    timing_count: int = field(default=10, metadata=check("--timing-count", ge=1, le=100_000))
    timing_tokens: int | None = field(default=1024, metadata=check("--timing-tokens", ge=2, le=10_000_000))
    max_new_tokens: int = field(default=1, metadata=check("--max-new-tokens", ge=1, le=4096))
    max_context_tokens: int = field(default=8192, metadata=check("--max-context-tokens", ge=8, le=10_000_000))
    link_gbps: float = field(default=200.0, metadata=check("--link-gbps", gt=0, le=1e6))
    dtype: str = "fp32"
    cpu_threads: int | None = field(default=None, metadata=check("--cpu-threads", ge=1, le=4096))


PRESETS: dict[str, CacheReuseConfig] = {
    "quick": CacheReuseConfig(cpu_threads=1),
    "paper": CacheReuseConfig(preset="paper", profile_count=50, heldout_count=50, group_size=2, tolerance=0.05, timing_tokens=None,
                              max_new_tokens=32, dtype="bf16"),
}


def validate(cfg: CacheReuseConfig) -> CacheReuseConfig:
    """Check what field ranges cannot: the real-pair options go together, files exist, names.

    Raises:
        ConfigError: naming the option and the fix.
    """
    from pathlib import Path

    from charbench.workloads.cache_reuse.metrics import SCORERS

    validate_fields(cfg)
    real = [cfg.sender, cfg.receiver, cfg.data]
    if any(v is not None for v in real) and not all(v is not None for v in real):
        raise ConfigError("--sender, --receiver and --data go together (a real pair needs both checkpoints and a "
                          "LongBench-style JSONL file); give all three, or none for the default pairs")
    for opt, value in (("--sender", cfg.sender), ("--receiver", cfg.receiver)):
        if value is not None and not (Path(value) / "config.json").is_file():
            raise ConfigError(f"{opt} {value}: not a checkpoint folder (no config.json); give a local Hugging Face "
                              "checkpoint folder (nothing is downloaded)")
    for opt, value in (("--data", cfg.data), ("--heldout-data", cfg.heldout_data)):
        if value is not None and not Path(value).is_file():
            raise ConfigError(f"{opt} {value}: no such file; give a local LongBench-style JSONL file")
    bad = [p for p in cfg.pairs if p not in DEFAULT_PAIRS]
    if bad or not cfg.pairs or len(set(cfg.pairs)) != len(cfg.pairs):
        raise ConfigError(f"--pairs: expected a comma-separated subset of {', '.join(DEFAULT_PAIRS)} without repeats, "
                          f"got {','.join(cfg.pairs)!r}")
    if cfg.metric is not None and cfg.metric not in SCORERS:
        raise ConfigError(f"--metric: unknown metric '{cfg.metric}'; valid: {', '.join(SCORERS)}")
    if cfg.prompt is not None and "{input}" not in cfg.prompt:
        raise ConfigError(f"--prompt {cfg.prompt!r}: must contain {{input}} (where the question goes)")
    if cfg.retrain and cfg.sender is not None:
        raise ConfigError("--retrain rebuilds the default pairs; it does not apply with --sender/--receiver")
    return cfg
