"""Configuration of ``charbench long-context``: one typed dataclass and its presets.

Presets:

* ``quick`` (default, CPU): the ``nano-long`` model (random weights), prefill + decode at
  2K, 8K and 32K tokens on layouts 1x1x1, kvp=2 and spp=2, and the mixed workload (an
  8K-token prefill arriving while 8 short requests decode) under adaptive and fixed
  2048-token chunks, TBT SLO 50 ms.
* ``paper``: Mnemosyne's CPU-sized analogue on the ``tiny-long`` model: contexts 4K-64K,
  layouts up to tp=2 x kvp=2, the mixed workload with a 32K prefill and 8 decodes, all three
  chunk policies (hours on a 2-core CPU; minutes on a GPU node)::

    cfg = select_preset(PRESETS, "quick")

Runner settings (idle baseline, cooldown, sampling, shuffle) are the spine's common options,
not fields here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from charbench.config import check, validate_fields
from charbench.errors import ConfigError

CHUNK_KINDS = ("fixed:N", "adaptive", "static-decreasing[:MAX:MIN:STAGES:SPAN]")
PROJECTION_MODELS = ("llama-3-8b", "llama-3-70b")
PROJECTION_GPUS = ("a100", "h100", "h200")


@dataclass
class LongContextConfig:
    """What ``charbench long-context`` runs.

    Attributes:
        preset: the preset this config started from.
        model: a long-context preset (``nano-long``, ``tiny-long``, ``small-long``; random
            weights) or any engine preset whose RoPE reaches the contexts.
        contexts: prompt lengths of the prefill sweep (tokens).
        parallel: layouts ``TPxSPPxKVP`` or ``key=n`` parts (``1x1x1``, ``kvp=2``, ``tp=2xkvp=2``);
            one resource group (one set of ranks) each.
        prefill_chunk: fixed chunk of the prefill sweep (no co-batched decodes there: the TBT
            budget does not constrain it).
        decode_steps: tokens generated after each sweep prefill (the first one ends TTFT).
        chunk: chunk policies compared on the mixed workload (``fixed:N``, ``adaptive``,
            ``static-decreasing[:MAX:MIN:STAGES:SPAN]``).
        tbt_slo_ms: the TBT SLO; adaptive chunking's per-iteration budget.
        mixed_context: the long prompt of the mixed workload (0 = no mixed points).
        mixed_decodes: short requests decoding when the long prompt arrives.
        mixed_prompt_tokens: prompt length of each short request.
        min_chunk: smallest adaptive chunk (also taken when nothing fits the budget, so the
            prefill always progresses).
        max_tokens_per_rank: KV tokens one KVP rank holds per sequence (progressive growth:
            the next rank takes over when a shard is full); None splits the longest sequence
            evenly over the KVP ranks.
        threads_per_rank: torch threads per rank process.
        block_size: tokens per KV block.
        projection_contexts: context lengths of the projection table (tokens).
        projection_models: models of the projection (``llama-3-8b``, ``llama-3-70b``).
        projection_gpus: GPUs of the projection (``a100``, ``h100``, ``h200``).
    """

    preset: str = "quick"
    model: str = "nano-long"
    contexts: list[int] = field(default_factory=lambda: [2048, 8192, 32768], metadata=check("--context", ge=16, le=10_485_760))
    parallel: list[str] = field(default_factory=lambda: ["1x1x1", "kvp=2", "spp=2"])
    prefill_chunk: int = field(default=1024, metadata=check("--prefill-chunk", ge=1, le=1_048_576))
    decode_steps: int = field(default=16, metadata=check("--decode-steps", ge=2, le=100_000))
    chunk: list[str] = field(default_factory=lambda: ["adaptive", "fixed:2048"])
    tbt_slo_ms: float = field(default=50.0, metadata=check("--tbt-slo-ms", gt=0, le=600_000))
    mixed_context: int = field(default=8192, metadata=check("--mixed-context", ge=0, le=10_485_760))
    mixed_decodes: int = field(default=8, metadata=check("--mixed-decodes", ge=1, le=1024))
    mixed_prompt_tokens: int = field(default=64, metadata=check("--mixed-prompt-tokens", ge=1, le=1_048_576))
    min_chunk: int = field(default=32, metadata=check("--min-chunk", ge=1, le=1_048_576))
    max_tokens_per_rank: int | None = field(default=None, metadata=check("--max-tokens-per-rank", ge=1, le=100_000_000))
    threads_per_rank: int = field(default=1, metadata=check("--threads-per-rank", ge=1, le=256))
    block_size: int = field(default=16, metadata=check("--block-size", ge=1, le=4096))
    projection_contexts: list[int] = field(default_factory=lambda: [1_048_576, 2_097_152, 4_194_304, 10_485_760],
                                           metadata=check("--projection-contexts", ge=1024, le=1_000_000_000))
    projection_models: list[str] = field(default_factory=lambda: list(PROJECTION_MODELS))
    projection_gpus: list[str] = field(default_factory=lambda: list(PROJECTION_GPUS))

    @property
    def has_adaptive(self) -> bool:
        """Whether a mixed point uses adaptive chunking (it needs the fitted predictor)."""
        return self.mixed_context > 0 and any(c.split(":")[0] == "adaptive" for c in self.chunk)


PRESETS: dict[str, LongContextConfig] = {
    "quick": LongContextConfig(),
    "paper": LongContextConfig(preset="paper", model="tiny-long", contexts=[4096, 16384, 32768, 65536],
                               parallel=["1x1x1", "kvp=2", "spp=2", "tp=2xkvp=2"], prefill_chunk=2048, decode_steps=32,
                               chunk=["adaptive", "fixed:2048", "static-decreasing"], mixed_context=32768),
}


def parse_tokens(text: str, option: str) -> int:
    """``4096``, ``4k``, ``32K``, ``1m``, ``10M`` -> tokens (k = 1024, m = 1024^2).

    Raises:
        ConfigError: not an integer with an optional k or m suffix.
    """
    t = text.strip().lower()
    mult = 1
    if t.endswith("k"):
        mult, t = 1024, t[:-1]
    elif t.endswith("m"):
        mult, t = 1024 * 1024, t[:-1]
    try:
        value = float(t)
    except ValueError:
        raise ConfigError(f"{option}: {text.strip()!r} is not a token count; e.g. {option} 4k,16k,32k or 4096") from None
    if value != value or value in (float("inf"), float("-inf")) or value * mult != int(value * mult):
        raise ConfigError(f"{option}: {text.strip()!r} is not a whole number of tokens; e.g. {option} 4k,16k,32k")
    return int(value * mult)


def parse_token_list(text: str, option: str) -> list[int]:
    """A comma-separated list of :func:`parse_tokens` values.

    Raises:
        ConfigError: an empty list or a bad item.
    """
    items = [p for p in text.split(",") if p.strip()]
    if not items:
        raise ConfigError(f"{option}: empty list; e.g. {option} 4k,16k,32k")
    return [parse_tokens(p, option) for p in items]


def check_chunk_spec(spec: str) -> None:
    """Refuse a ``--chunk`` item the engine cannot build.

    Raises:
        ConfigError: naming ``--chunk`` and the accepted forms.
    """
    from charbench.engine import adaptive_chunking  # noqa: F401  (registers adaptive, static-decreasing)
    from charbench.engine.chunking import make_chunk_policy

    name = spec.split(":")[0]
    if name == "adaptive":
        if spec != "adaptive":
            raise ConfigError(f"--chunk {spec!r}: adaptive takes no argument (its budget is --tbt-slo-ms)")
        return
    if name not in ("fixed", "static-decreasing") or spec == "fixed":
        raise ConfigError(f"--chunk {spec!r}: unknown chunk policy; valid: {', '.join(CHUNK_KINDS)}")
    try:
        make_chunk_policy(spec, 1 << 30)
    except ConfigError as exc:
        raise ConfigError(f"--chunk {spec!r}: {str(exc).split(': ', 1)[-1]}") from None


def validate(cfg: LongContextConfig) -> LongContextConfig:
    """Check what field ranges cannot: layouts, chunk policies, the model, names, fits.

    Raises:
        ConfigError: naming the option and the fix.
    """
    from charbench.engine.parallel import Layout
    from charbench.engine.runner import resolve_model_config

    validate_fields(cfg)
    model = resolve_model_config(cfg.model)  # a preset or a local HF checkpoint; refuses others with the valid names
    if not cfg.contexts:
        raise ConfigError("--context: empty list; e.g. --context 4k,16k,32k")
    if not cfg.parallel:
        raise ConfigError("--parallel: empty list; e.g. --parallel 1x1x1,kvp=2,spp=2")
    labels = [Layout.parse(p).label for p in cfg.parallel]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"--parallel: {','.join(cfg.parallel)} names a layout twice")
    for spec, label in zip(cfg.parallel, labels):
        lay = Layout.parse(spec)
        if lay.spp > model.num_layers:
            raise ConfigError(f"--parallel {spec}: spp={lay.spp} stages but {cfg.model} has {model.num_layers} layers")
        if lay.tp > 1 and (model.num_kv_heads % lay.tp or model.num_heads % lay.tp):
            raise ConfigError(f"--parallel {spec}: tp={lay.tp} must divide {cfg.model}'s {model.num_heads} heads and {model.num_kv_heads} KV heads")
    if cfg.mixed_context > 0 and not cfg.chunk:
        raise ConfigError("--chunk: empty list; e.g. --chunk adaptive,fixed:2048")
    if len(set(cfg.chunk)) != len(cfg.chunk):
        raise ConfigError(f"--chunk: {','.join(cfg.chunk)} names a policy twice")
    for spec in cfg.chunk:
        check_chunk_spec(spec)
    longest = max(max(cfg.contexts) + cfg.decode_steps, cfg.mixed_context + 1)
    if longest > model.max_position_embeddings:
        raise ConfigError(f"--context: {longest} tokens exceed {cfg.model}'s {model.max_position_embeddings} positions; "
                          "use a long-context model (--model nano-long, tiny-long or small-long)")
    if cfg.max_tokens_per_rank is not None:
        for spec in cfg.parallel:
            kvp = Layout.parse(spec).kvp
            if longest > kvp * cfg.max_tokens_per_rank:
                raise ConfigError(f"--max-tokens-per-rank {cfg.max_tokens_per_rank}: a sequence of {longest} tokens does not fit "
                                  f"{spec} (kvp={kvp}); raise --max-tokens-per-rank or kvp")
    for opt, values, valid in (("--projection-models", cfg.projection_models, PROJECTION_MODELS),
                               ("--projection-gpus", cfg.projection_gpus, PROJECTION_GPUS)):
        bad = [v for v in values if v not in valid]
        if bad or not values or len(set(values)) != len(values):
            raise ConfigError(f"{opt}: expected a comma-separated subset of {', '.join(valid)} without repeats, got {','.join(values)!r}")
    return cfg
