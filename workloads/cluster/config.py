"""``cluster-sim`` configuration: one typed dataclass and its presets.

Presets:

* ``quick`` (default): a 1-hour synthetic conversation-like trace (20 req/s mean, peak/mean 1.7,
  bursts), llama-2-70b on the analytic H100 profile, all four policies. About 106k requests per
  policy (POLCA: 25% more); 16 s of CPU time (measured 2026-12-04; 142 s wall on a shared
  2-core box at load average 15-17, so the wall time on an idle one is not measured here).
* ``dynamollm``: the paper's setting as far as published [S]: llama-2-70b on DGX-H100, 9 pools,
  controller periods 1800/300/5 s, TP 2/4/8, 800-1980 MHz; a 4-hour conversation-like trace
  (peak/mean 1.7) and policies static and dynamollm.
* ``polca``: POLCA's policy on A100 (T1 80%, T2 89%, caps 1275/1110/1305 MHz, 5% hysteresis),
  llama-2-13b (a model that fits one A100 server's memory comfortably; the paper's models are
  not all public), oversubscription +1, +2 and +3 instances of the 8 static ones it provisions (12.5%, 25%,
  37.5%: instances are whole, so other fractions repeat these; the paper's claim is 30%), and static.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from charbench.config import MAX_WAIT_S, check, validate_fields
from charbench.errors import ConfigError
from charbench.sim.engine import ROUTINGS
from charbench.sim.policies import PolicyConfig
from charbench.sim.policies.dynamollm import POOLINGS

BUILTIN_POLICIES: tuple[str, ...] = ("static", "dynamollm", "polca", "greener")


@dataclass
class ClusterSimConfig:
    """Everything ``cluster-sim`` needs (see the CLI's --help for each option).

    Attributes:
        trace: ``synthetic`` or an Azure LLM inference trace CSV (2023 or 2024 format).
        duration_s: simulated span (synthetic) or trace window length (file; None = to the end).
        trace_start_s, time_scale: trace window start and time multiplier.
        mean_rate_rps, peak_to_mean, burst_per_h, burst_factor, length_dist, start_hour: synthetic trace.
        policies: policies to compare (``static`` is the baseline of the deltas).
        profile: ``a100``, ``h100``, ``h200`` (analytic) or a serve-sweep profile file.
        model: model name (analytic profiles: a built-in spec).
        kv_capacity_tokens: KV-cache tokens per instance (measured profiles only).
        tp: static baseline's tensor parallelism.
        instances: static baseline's instances (None: enough for the trace's peak at the maximum clock).
        slo_ttft_ms, slo_tbt_ms: per-request objectives.
        max_num_seqs, chunk_tokens, routing: engine settings.
        bin_s: timeline bin width (None: duration / 720, at least 1 s).
        spinup_s, reshard_s, freq_change_s: reconfiguration costs.
        plan_headroom, load_headroom: controller margins.
        dyn_*, polca_*: policy knobs (see :class:`charbench.sim.policies.PolicyConfig`);
            ``polca_oversubscription`` is a list: one POLCA point per value.
        carbon_file: CSV ``time_s,g_per_kwh`` (None: synthetic diurnal curve).
        gpu_usd_per_h: GPU-hour price (None: the built-in table for the GPU).
        electricity_usd_per_kwh: energy price.
        policy_file: a Python file registering extra policies.
    """

    trace: str = "synthetic"
    duration_s: float | None = field(default=3600.0, metadata=check("--duration", gt=0, le=90 * 86_400))
    trace_start_s: float = field(default=0.0, metadata=check("--trace-start", ge=0))
    time_scale: float = field(default=1.0, metadata=check("--time-scale", gt=0))
    mean_rate_rps: float = field(default=5.4, metadata=check("--rate", gt=0, le=100_000))
    peak_to_mean: float = field(default=1.7, metadata=check("--peak-to-mean", ge=1, le=10))
    burst_per_h: float = field(default=2.0, metadata=check("--bursts-per-hour", ge=0, le=3600))
    burst_factor: float = field(default=2.0, metadata=check("--burst-factor", ge=1, le=100))
    length_dist: str = "azure-conv"
    start_hour: float = field(default=10.0, metadata=check(ge=0, lt=24))
    policies: list[str] = field(default_factory=lambda: list(BUILTIN_POLICIES))
    profile: str = "h100"
    model: str = "llama-2-70b"
    kv_capacity_tokens: int | None = field(default=None, metadata=check("--kv-capacity-tokens", ge=1))
    tp: int = field(default=8, metadata=check("--tp", ge=1))
    instances: int | None = field(default=None, metadata=check("--instances", ge=1, le=100_000))
    slo_ttft_ms: float = field(default=2000.0, metadata=check("--slo-ttft-ms", gt=0))
    slo_tbt_ms: float = field(default=100.0, metadata=check("--slo-tbt-ms", gt=0))
    max_num_seqs: int = field(default=128, metadata=check("--max-num-seqs", ge=1))
    chunk_tokens: int = field(default=512, metadata=check("--chunk-tokens", ge=1))
    routing: str = "least-outstanding"
    bin_s: float | None = field(default=None, metadata=check("--bin-s", gt=0, le=MAX_WAIT_S))
    spinup_s: float = field(default=60.0, metadata=check("--spinup-s", ge=0, le=MAX_WAIT_S))
    reshard_s: float = field(default=60.0, metadata=check("--reshard-s", ge=0, le=MAX_WAIT_S))
    freq_change_s: float = field(default=0.05, metadata=check("--freq-change-s", ge=0, le=60))
    plan_headroom: float = field(default=0.5, metadata=check("--plan-headroom", gt=0, le=1))
    load_headroom: float = field(default=0.2, metadata=check("--load-headroom", ge=0, le=10))
    dyn_pools: str = "io9"
    predictor_accuracy: float = field(default=0.81, metadata=check("--predictor-accuracy", ge=0, le=1))
    cluster_period_s: float = field(default=1800.0, metadata=check("--cluster-period-s", ge=0, le=MAX_WAIT_S))
    pool_period_s: float = field(default=300.0, metadata=check("--pool-period-s", ge=0, le=MAX_WAIT_S))
    freq_period_s: float = field(default=5.0, metadata=check("--freq-period-s", ge=0, le=MAX_WAIT_S))
    polca_oversubscription: list[float] = field(default_factory=lambda: [0.3], metadata=check("--polca-oversubscription", ge=0, le=4))
    polca_budget_w: float | None = field(default=None, metadata=check("--polca-budget-w", gt=0))
    polca_lp_fraction: float = field(default=0.5, metadata=check("--polca-lp-fraction", ge=0, lt=1))
    polca_t1: float = field(default=0.80, metadata=check("--polca-t1", gt=0, le=1))
    polca_t2: float = field(default=0.89, metadata=check("--polca-t2", gt=0, le=1))
    polca_cap_latency_s: float = field(default=5.0, metadata=check("--polca-cap-latency-s", ge=0, le=3600))
    gpus_per_row: int = field(default=320, metadata=check("--gpus-per-row", ge=1))
    carbon_file: str | None = None
    gpu_usd_per_h: float | None = field(default=None, metadata=check("--gpu-price", ge=0))
    electricity_usd_per_kwh: float = field(default=0.10, metadata=check("--electricity-price", ge=0))
    policy_file: str | None = None

    def validate(self) -> None:
        """Raise ConfigError naming the option for a value the simulator cannot use."""
        validate_fields(self)
        from charbench.sim.policies import POLICIES, load_policy_file

        if self.policy_file:
            load_policy_file(self.policy_file)  # registers its policies before the names are checked
        if not self.policies:
            raise ConfigError(f"--policies: empty; give one or more of {', '.join(sorted(POLICIES))}")
        for p in self.policies:
            if p not in POLICIES:
                raise ConfigError(f"--policies: unknown policy {p!r}; valid: {', '.join(sorted(POLICIES))} (add one with --policy-file)")
        if len(set(self.policies)) != len(self.policies):
            raise ConfigError(f"--policies: {','.join(self.policies)} names a policy twice")
        if self.routing not in ROUTINGS:
            raise ConfigError(f"--routing: unknown routing {self.routing!r}; valid: {', '.join(ROUTINGS)}")
        if self.dyn_pools not in POOLINGS:
            raise ConfigError(f"--dyn-pools: unknown pooling {self.dyn_pools!r}; valid: {', '.join(POOLINGS)}")
        if self.length_dist not in ("azure-conv", "azure-code"):
            raise ConfigError(f"--length-dist: {self.length_dist!r}; valid: azure-conv, azure-code")
        if self.trace == "synthetic" and self.duration_s is None:
            raise ConfigError("--duration: a synthetic trace needs a duration, e.g. --duration 1h")
        if self.polca_t1 >= self.polca_t2:
            raise ConfigError(f"--polca-t1 {self.polca_t1:g} must be below --polca-t2 {self.polca_t2:g}")
        if self.chunk_tokens <= self.max_num_seqs:
            raise ConfigError(f"--chunk-tokens {self.chunk_tokens} must exceed --max-num-seqs {self.max_num_seqs}: an iteration carries every running decode plus prompt tokens")
        if not self.polca_oversubscription:
            raise ConfigError("--polca-oversubscription: empty; e.g. --polca-oversubscription 0.3")

    def policy_config(self, instances: int, seed: int) -> PolicyConfig:
        """The simulator's policy settings for this config."""
        return PolicyConfig(
            tp=self.tp, instances=instances, slo_ttft_s=self.slo_ttft_ms / 1000, slo_tbt_s=self.slo_tbt_ms / 1000,
            plan_headroom=self.plan_headroom, load_headroom=self.load_headroom, chunk_tokens=self.chunk_tokens, seed=seed,
            dyn_pools=self.dyn_pools, predictor_accuracy=self.predictor_accuracy, cluster_period_s=self.cluster_period_s,
            pool_period_s=self.pool_period_s, freq_period_s=self.freq_period_s, polca_budget_w=self.polca_budget_w,
            polca_lp_fraction=self.polca_lp_fraction, polca_t1=self.polca_t1, polca_t2=self.polca_t2,
            polca_cap_latency_s=self.polca_cap_latency_s,
        )


PRESETS: dict[str, ClusterSimConfig] = {
    "quick": ClusterSimConfig(mean_rate_rps=20.0),
    "dynamollm": ClusterSimConfig(duration_s=4 * 3600.0, mean_rate_rps=8.0, policies=["static", "dynamollm"], start_hour=8.0),
    "polca": ClusterSimConfig(profile="a100", model="llama-2-13b", tp=2, policies=["static", "polca"], mean_rate_rps=8.0,
                              polca_oversubscription=[0.125, 0.25, 0.375], slo_tbt_ms=150.0),
}
