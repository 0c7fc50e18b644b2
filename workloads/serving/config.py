"""``serve-sweep`` configuration: one typed dataclass and its named presets.

::

    cfg = select_preset(PRESETS, "quick")
    cfg = apply_overrides(cfg, {"request_rate_rps": [2.0, 8.0]}, source="--config x.toml")
    cfg.validate()

List-valued knobs make sweep points (cartesian product): ``model``, ``tp``, ``dtype``,
``max_num_seqs`` (these restart the built-in engine), ``sm_freq_mhz``, ``power_limit_w``
(set through the GPU control layer, always restored), ``input_len``, ``output_len`` and
the load: ``request_rate_rps`` (open loop) or ``concurrency`` (closed loop).

Presets:

* ``quick``: the CPU default. The ``tiny`` built-in engine, 48 fixed-length requests
  (64 in / 32 out) per point at 4 and 16 req/s and all at once, with ``max_num_seqs``
  4 and 16 (six points, about a minute on 2 idle cores; at most 3 minutes).
* ``greener-llms``: the knob study of "Towards Greener LLMs" (Stojkovic et al., arXiv
  2403.20306) for GPUs: the llama-2-70b shape (random weights; pass ``--model`` a local
  checkpoint for real ones), tp 2/4/8, an SM-frequency sweep, short/long input and output
  classes, and three rates. The length classes, rates and frequencies are charbench's
  choices for that study, not numbers taken from the paper. Expect hours on an 8-GPU node.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from charbench.config import MAX_WAIT_S, check, check_writable_file, validate_fields
from charbench.errors import ConfigError
from charbench.workloads.serving.lengths import LENGTH_DISTS, LengthSpec
from charbench.workloads.serving.metrics import Slo

MODES: tuple[str, ...] = ("grid", "sweep", "slo-search")
ARRIVALS: tuple[str, ...] = ("poisson", "gamma", "constant", "closed", "trace")
DTYPES: tuple[str, ...] = ("fp32", "bf16", "fp16")
PARETO_LATENCIES: tuple[str, ...] = ("ttft", "tpot", "e2el")
#: most requests per load (prompts, arrival times and per-request records are all in memory)
MAX_REQUESTS = 1_000_000
#: the max-throughput rate (all at once) as config.json and the CLI spell it; the value is float inf
MAX_RATE = "inf"
#: knobs whose change needs a new engine (and therefore cannot be swept against a URL)
RESTART_KNOBS: tuple[str, ...] = ("tp", "max_num_seqs", "dtype")


@dataclass
class ServeSweepConfig:
    """Everything ``serve-sweep`` needs.

    Attributes:
        target: ``engine`` (built-in engine in process) or an OpenAI-compatible base URL.
        mode: ``grid`` (explicit knobs), ``sweep`` (synchronous, max throughput, then
            ``sweep_rates`` rates in between) or ``slo-search`` (largest rate meeting the SLOs).
        api: ``completions`` or ``chat`` (URL targets).
        model: built-in engine model(s) (preset name or checkpoint folder), or the served
            model name for a URL target (empty list: ask the server).
        arrival: ``poisson``, ``gamma``, ``constant`` (open loop at ``request_rate_rps``),
            ``closed`` (``concurrency`` users) or ``trace`` (Azure CSV replay).
        request_rate_rps: requests/s per point (inf = all at once).
        concurrency: users per point for ``closed``.
        burstiness: gamma shape (1 = Poisson).
        max_concurrency: cap on requests in flight (open loop), None = no cap.
        ramp_up_s: linear ramp from ``ramp_start_rps`` to the rate over this time (0 = none).
        ramp_start_rps: rate at the start of the ramp.
        rescale_arrivals: rescale gaps so N requests span N/rate (vLLM).
        num_requests: measured requests per point (trace: at most this many).
        warmup_requests: unmeasured requests before each point.
        length_dist: see :mod:`charbench.workloads.serving.lengths`.
        input_len, output_len: lengths per point (central values for random dists).
        range_ratio, std_ratio, zipf_alpha, length_scale: distribution parameters.
        trace_file: Azure LLM trace CSV for ``arrival = "trace"``.
        time_scale: trace time multiplier (0.5 = twice as fast).
        trace_start_s, trace_duration_s: the replayed window (trace seconds).
        max_num_seqs, tp, dtype: engine knobs (restart per value); for a URL target they
            describe the server (empty = unknown; ``max_num_seqs`` is needed for the
            steady-state window).
        max_num_batched_tokens, kv_cache_gb, max_model_len: fixed engine settings.
        sm_freq_mhz: SM clocks to lock per point (empty = leave the clocks alone).
        power_limit_w: power limits per point (empty = leave the limit alone).
        slo_ttft_ms, slo_tpot_ms, slo_e2el_ms: objectives (None = unconstrained).
        slo_attainment: fraction of requests that must be good for a point to meet the SLO.
        sweep_rates: rates between synchronous and max throughput in ``sweep`` mode.
        search_iters: bisection steps of ``slo-search``.
        search_rel_tol: stop bisecting when (hi - lo) / hi is below this.
        search_lo_frac: the lowest rate tried, as a fraction of max throughput.
        request_timeout_s: per-request timeout (counted, not fatal).
        max_duration_s: stop sending a load's requests after this many seconds (None = send
            them all; the point records ``truncated`` and ``unsent_num_requests``).
        prompt_format: ``auto`` (ids for completions with a tokenizer, else text), ``ids``, ``text``.
        tokenizer: tokenizer for URL targets (tokenizer.json, checkpoint folder or preset).
        force_output_len: send ``ignore_eos``/``min_tokens`` to force output lengths.
        pareto_latency: latency axis of the energy-latency Pareto plot.
        export_profile: write the measured profile for ``charbench cluster-sim`` here.

    The runner settings (idle baseline, cooldown, sampler, shuffle) are the spine's: the
    presets' defaults are ``STUDY.settings`` in ``__init__.py``, ``[settings]`` in ``--config``.
    """

    target: str = "engine"
    mode: str = "grid"
    api: str = "completions"
    model: list[str] = field(default_factory=lambda: ["tiny"])
    arrival: str = "poisson"
    # inf is the documented "all at once" (max-throughput) load
    request_rate_rps: list[float] = field(default_factory=lambda: [math.inf], metadata=check("--request-rate", gt=0, allow_inf=True))
    concurrency: list[int] = field(default_factory=list, metadata=check("--concurrency", ge=1))
    burstiness: float = field(default=1.0, metadata=check("--burstiness", gt=0))
    max_concurrency: int | None = field(default=None, metadata=check("--max-concurrency", ge=1))
    ramp_up_s: float = field(default=0.0, metadata=check("--ramp-up-s", ge=0, le=MAX_WAIT_S))
    ramp_start_rps: float = field(default=0.0, metadata=check("--ramp-start-rps", ge=0))
    rescale_arrivals: bool = True
    num_requests: int = field(default=64, metadata=check("--num-requests", ge=1))
    warmup_requests: int = field(default=2, metadata=check("--warmup-requests", ge=0))
    length_dist: str = "fixed"
    input_len: list[int] = field(default_factory=lambda: [128], metadata=check("--input-len", ge=1))
    output_len: list[int] = field(default_factory=lambda: [128], metadata=check("--output-len", ge=1))
    # ranges of the length parameters are LengthSpec.validate's; here they must be finite
    range_ratio: float = field(default=0.25, metadata=check("--range-ratio"))
    std_ratio: float = field(default=0.25, metadata=check("--std-ratio"))
    zipf_alpha: float = field(default=1.2, metadata=check("--zipf-alpha"))
    length_scale: float = field(default=1.0, metadata=check("--length-scale"))
    trace_file: str | None = None
    time_scale: float = field(default=1.0, metadata=check("--time-scale", gt=0))
    trace_start_s: float = field(default=0.0, metadata=check("--trace-start", ge=0))
    trace_duration_s: float | None = field(default=None, metadata=check("--trace-duration", gt=0))
    max_num_seqs: list[int] = field(default_factory=lambda: [64], metadata=check("--max-num-seqs", ge=1))
    tp: list[int] = field(default_factory=lambda: [1], metadata=check("--tp", ge=1))
    dtype: list[str] = field(default_factory=lambda: ["fp32"])
    max_num_batched_tokens: int = field(default=512, metadata=check("--max-num-batched-tokens", ge=1))
    kv_cache_gb: float | None = field(default=None, metadata=check("--kv-cache-gb", gt=0))
    max_model_len: int | None = field(default=None, metadata=check("--max-model-len", ge=2))
    sm_freq_mhz: list[int] = field(default_factory=list, metadata=check("--sm-freq", gt=0))
    power_limit_w: list[float] = field(default_factory=list, metadata=check("--power-limit", gt=0))
    slo_ttft_ms: float | None = field(default=None, metadata=check("--slo ttft_ms", gt=0))
    slo_tpot_ms: float | None = field(default=None, metadata=check("--slo tpot_ms", gt=0))
    slo_e2el_ms: float | None = field(default=None, metadata=check("--slo e2el_ms", gt=0))
    slo_attainment: float = field(default=0.9, metadata=check("--slo-attainment", gt=0, le=1))
    sweep_rates: int = field(default=3, metadata=check("--sweep-rates", ge=0))
    search_iters: int = field(default=5, metadata=check("--search-iters", ge=1))
    search_rel_tol: float = field(default=0.05, metadata=check(gt=0))
    search_lo_frac: float = field(default=0.1, metadata=check(gt=0, lt=1))
    request_timeout_s: float = field(default=600.0, metadata=check("--request-timeout", gt=0))
    max_duration_s: float | None = field(default=None, metadata=check("--max-duration", gt=0, le=MAX_WAIT_S))
    prompt_format: str = "auto"
    tokenizer: str | None = None
    force_output_len: bool = True
    pareto_latency: str = "tpot"
    export_profile: str | None = None

    # -- derived -----------------------------------------------------------------------
    @property
    def is_url(self) -> bool:
        """The target is a URL (not the built-in engine)."""
        return self.target != "engine"

    @property
    def slo(self) -> Slo:
        """The objectives as a :class:`Slo`."""
        return Slo(self.slo_ttft_ms, self.slo_tpot_ms, self.slo_e2el_ms)

    def length_spec(self, input_len: int, output_len: int) -> LengthSpec:
        """The length distribution of a point."""
        return LengthSpec(self.length_dist, int(input_len), int(output_len), self.range_ratio, self.std_ratio, self.zipf_alpha, self.length_scale)

    def normalize(self) -> ServeSweepConfig:
        """Read config.json's ``"inf"`` rate back as the float after a ``--resume``.

        Folders written before the naming rule saved the rate as ``request_rate`` with inf as
        null; :meth:`from_dict` renames the key and null reads as inf here.
        """
        self.request_rate_rps = [math.inf if r is None or r == MAX_RATE else float(r) for r in self.request_rate_rps]
        return self

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> ServeSweepConfig:
        """Rebuild a config saved in a run folder's config.json (``study_config``).

        Raises:
            ConfigError: a key this version does not know.
        """
        import dataclasses

        names = {f.name for f in dataclasses.fields(cls)}
        if "request_rate" in d and "request_rate_rps" not in d:  # config.json from before the naming rule
            d = {("request_rate_rps" if k == "request_rate" else k): v for k, v in d.items()}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"--resume: the saved serve-sweep config has unknown keys {', '.join(unknown)} (made by another charbench version?)")
        return cls(**d).normalize()  # type: ignore[arg-type]

    # -- validation ----------------------------------------------------------------------
    def validate(self) -> None:
        """Check every option; raise ConfigError naming the option and the fix.

        Numeric ranges are declared on the fields (:func:`charbench.config.check`); the
        checks here are the ones between fields.
        """
        validate_fields(self)
        if self.mode not in MODES:
            raise ConfigError(f"--mode: unknown mode {self.mode!r}; valid: {', '.join(MODES)}")
        if self.arrival not in ARRIVALS:
            raise ConfigError(f"--arrival: unknown arrival {self.arrival!r}; valid: {', '.join(ARRIVALS)}")
        if self.api not in ("completions", "chat"):
            raise ConfigError(f"--api: unknown API {self.api!r}; valid: completions, chat")
        if self.prompt_format not in ("auto", "ids", "text"):
            raise ConfigError(f"--prompt-format: unknown form {self.prompt_format!r}; valid: auto, ids, text")
        if self.api == "chat" and self.prompt_format == "ids":
            raise ConfigError("--prompt-format ids: chat messages are text; use --prompt-format text or --api completions")
        if self.length_dist not in LENGTH_DISTS:
            raise ConfigError(f"--length-dist: unknown distribution {self.length_dist!r}; valid: {', '.join(LENGTH_DISTS)}")
        if self.pareto_latency not in PARETO_LATENCIES:
            raise ConfigError(f"--pareto-latency: unknown {self.pareto_latency!r}; valid: {', '.join(PARETO_LATENCIES)}")
        if not self.is_url and not self.model:
            raise ConfigError("--model: give at least one built-in model (preset name or checkpoint folder)")
        required = ("request_rate_rps", "input_len", "output_len") + (() if self.is_url else RESTART_KNOBS)
        for name in required:
            if not getattr(self, name):
                raise ConfigError(f"--{name.replace('_', '-')}: empty list of values")
        if self.arrival == "closed" and not self.concurrency and self.mode == "grid":
            raise ConfigError("--arrival closed needs --concurrency N[,M...] (users per point)")
        if self.concurrency and self.arrival != "closed":
            raise ConfigError(f"--concurrency is for closed-loop load; add --arrival closed (now {self.arrival}) or use --request-rate")
        if self.arrival == "trace":
            if not self.trace_file:
                raise ConfigError("--arrival trace needs --trace FILE.csv (an Azure LLM inference trace)")
            if self.mode != "grid":
                raise ConfigError(f"--mode {self.mode} chooses rates itself; replay a trace with --mode grid")
        elif self.trace_file:
            raise ConfigError("--trace FILE is replayed only with --arrival trace")
        if self.num_requests > MAX_REQUESTS:  # every request's prompt and record is held in memory
            raise ConfigError(f"--num-requests: {self.num_requests} is more than {MAX_REQUESTS} per load; split the run")
        for d in self.dtype:
            if d not in DTYPES:
                raise ConfigError(f"--dtype: unknown dtype {d!r}; valid: {', '.join(DTYPES)}")
        # engine settings: checked here so a bad value fails before the run starts, not at its first point
        if not self.is_url and self.max_num_seqs and self.max_num_batched_tokens < max(self.max_num_seqs):
            raise ConfigError(
                f"--max-num-batched-tokens {self.max_num_batched_tokens}: must be >= every --max-num-seqs value "
                f"(largest {max(self.max_num_seqs)}) so each running sequence can decode every step; raise it or lower --max-num-seqs"
            )
        if self.export_profile:
            check_writable_file(self.export_profile, "--export-profile")
        if self.mode == "slo-search" and not self.slo.given:
            raise ConfigError("--mode slo-search needs --slo, e.g. --slo ttft_ms=500,tpot_ms=50")
        if self.mode in ("sweep", "slo-search"):
            if self.arrival == "closed":
                raise ConfigError(f"--mode {self.mode} varies the request rate; use --arrival poisson, gamma or constant")
            if len(self.request_rate_rps) > 1 or not math.isinf(self.request_rate_rps[0]):
                raise ConfigError(f"--request-rate: --mode {self.mode} chooses the rates itself; drop --request-rate or use --mode grid")
        if self.is_url:
            from charbench.workloads.serving.client import normalize_base_url

            normalize_base_url(self.target)
            for knob in RESTART_KNOBS:
                values = getattr(self, knob)
                if len(values) > 1:
                    flag = "--" + knob.replace("_", "-")
                    raise ConfigError(
                        f"{flag}: sweeping {knob} needs a server restart per value, which serve-sweep cannot do "
                        f"to --target {self.target}; use --target engine, or restart the server with each "
                        f"{flag} value and run serve-sweep once per server"
                    )
        self.length_spec(self.input_len[0], self.output_len[0]).validate()


PRESETS: dict[str, ServeSweepConfig] = {
    "quick": ServeSweepConfig(
        model=["tiny"],
        request_rate_rps=[4.0, 16.0, math.inf],
        max_num_seqs=[4, 16],
        input_len=[64],
        output_len=[32],
        num_requests=48,
        warmup_requests=2,
        slo_ttft_ms=2000.0,
        slo_tpot_ms=250.0,
    ),
    "greener-llms": ServeSweepConfig(
        model=["llama-2-70b"],
        dtype=["bf16"],
        tp=[2, 4, 8],
        max_num_seqs=[64],
        max_num_batched_tokens=8192,
        sm_freq_mhz=[990, 1320, 1650, 1980],
        input_len=[512, 4096],
        output_len=[128, 1024],
        request_rate_rps=[0.5, 2.0, 8.0],
        num_requests=200,
        warmup_requests=4,
        slo_ttft_ms=2000.0,
        slo_tpot_ms=100.0,
    ),
}
