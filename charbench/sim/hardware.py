"""Public specifications of the GPUs and models the analytic profiles are built from.

Every constant says where it comes from. "assumption" marks charbench's own choice where no
public figure exists; the report shows them as such (they are the provenance of every
analytic profile).
"""

from __future__ import annotations

from typing import Any

from dataclasses import dataclass

from charbench.errors import ConfigError


@dataclass(frozen=True)
class GpuSpec:
    """One GPU SKU (SXM, dense bf16).

    Attributes:
        name: short name (``a100``, ``h100``, ``h200``).
        peak_bf16_flops: dense bf16 tensor FLOP/s at the maximum SM clock.
        hbm_bw_bytes_s: HBM bandwidth in bytes/s.
        hbm_bytes: HBM capacity in bytes.
        tdp_w: board power limit (TDP) in W.
        idle_w: power of an idle GPU with the model loaded, in W.
        max_sm_freq_mhz: maximum SM (boost) clock.
        min_sm_freq_mhz: lowest SM clock the frequency model and controllers use.
        freq_levels_mhz: the DVFS levels controllers choose from (ascending).
        nvlink_bw_bytes_s: NVLink bandwidth per GPU (all links, one direction), bytes/s.
        source: where the numbers come from.
    """

    name: str
    peak_bf16_flops: float
    hbm_bw_bytes_s: float
    hbm_bytes: float
    tdp_w: float
    idle_w: float
    max_sm_freq_mhz: float
    min_sm_freq_mhz: float
    freq_levels_mhz: tuple[float, ...]
    nvlink_bw_bytes_s: float
    source: str


GPUS: dict[str, GpuSpec] = {
    # NVIDIA A100 datasheet (SXM4 80GB): 312 TFLOP/s bf16 dense, 2,039 GB/s, 400 W, NVLink 600 GB/s;
    # 1410 MHz max SM clock (nvidia-smi -q); idle 63 W from SplitwiseSim configs/power_model/constant.yaml.
    # Levels: 810..1410 MHz in ~100 MHz steps plus POLCA's caps (1275, 1110, 1305) [S, POLCA].
    "a100": GpuSpec("a100", 312e12, 2.039e12, 80e9, 400.0, 63.0, 1410.0, 810.0,
                    (810.0, 1005.0, 1110.0, 1200.0, 1275.0, 1305.0, 1410.0), 300e9,
                    "NVIDIA A100 SXM4 80GB datasheet; idle W: SplitwiseSim constant.yaml"),
    # NVIDIA H100 SXM5 datasheet: 989 TFLOP/s bf16 dense, 3.35 TB/s, 80 GB, 700 W, NVLink 900 GB/s,
    # 1980 MHz max SM clock; idle 75 W from SplitwiseSim constant.yaml; levels 800-1980 MHz in 200 MHz
    # steps as in DynamoLLM (cluster-energy appendix, [S]).
    "h100": GpuSpec("h100", 989e12, 3.35e12, 80e9, 700.0, 75.0, 1980.0, 800.0,
                    (800.0, 1000.0, 1200.0, 1400.0, 1600.0, 1800.0, 1980.0), 450e9,
                    "NVIDIA H100 SXM5 datasheet; idle W: SplitwiseSim constant.yaml; levels: DynamoLLM"),
    # NVIDIA H200 SXM datasheet: same compute as H100 (989 TFLOP/s), 4.8 TB/s, 141 GB, 700 W.
    # Idle: assumption, the H100 value (same board class; no public figure found).
    "h200": GpuSpec("h200", 989e12, 4.8e12, 141e9, 700.0, 75.0, 1980.0, 800.0,
                    (800.0, 1000.0, 1200.0, 1400.0, 1600.0, 1800.0, 1980.0), 450e9,
                    "NVIDIA H200 SXM datasheet; idle W: assumption (H100's)"),
}


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only LLM's size, as far as time and memory need it.

    Attributes:
        name: short name.
        params: parameter count.
        layers: transformer layers.
        hidden: hidden size.
        kv_heads: key/value heads (GQA).
        head_dim: head dimension.
        max_context: longest prompt + output in tokens.
        bytes_per_param: weights dtype size (bf16 = 2).
        source: where the numbers come from.
    """

    name: str
    params: float
    layers: int
    hidden: int
    kv_heads: int
    head_dim: int
    max_context: int
    bytes_per_param: float = 2.0
    source: str = ""

    @property
    def weight_bytes(self) -> float:
        """Bytes of weights."""
        return self.params * self.bytes_per_param

    @property
    def kv_bytes_per_token(self) -> float:
        """KV-cache bytes per token: K and V, every layer, every KV head."""
        return 2.0 * self.layers * self.kv_heads * self.head_dim * self.bytes_per_param


MODELS: dict[str, ModelSpec] = {
    # Llama 2 paper (Touvron et al. 2023), Table 1 and the HF config.json of each checkpoint.
    "llama-2-7b": ModelSpec("llama-2-7b", 6.74e9, 32, 4096, 32, 128, 4096, source="Llama 2 paper; HF config.json"),
    "llama-2-13b": ModelSpec("llama-2-13b", 13.0e9, 40, 5120, 40, 128, 4096, source="Llama 2 paper; HF config.json"),
    "llama-2-70b": ModelSpec("llama-2-70b", 69.0e9, 80, 8192, 8, 128, 4096, source="Llama 2 paper (GQA, 8 KV heads); HF config.json"),
    # Llama 3 model card / HF config.json (8K context, GQA 8 KV heads).
    "llama-3-8b": ModelSpec("llama-3-8b", 8.03e9, 32, 4096, 8, 128, 8192, source="Llama 3 model card; HF config.json"),
    "llama-3-70b": ModelSpec("llama-3-70b", 70.6e9, 80, 8192, 8, 128, 8192, source="Llama 3 model card; HF config.json"),
}

#: Efficiency and power-model constants (assumptions, shown in every analytic profile's provenance).
ASSUMPTIONS: dict[str, float] = {
    # fraction of peak FLOP/s a prefill reaches (vLLM/Sarathi report 40-60% MFU on long prompts)
    "prefill_mfu": 0.5,
    # fraction of peak FLOP/s the per-sequence decode math reaches (small GEMMs)
    "decode_mfu": 0.3,
    # fraction of HBM bandwidth a decode reaches reading weights and KV (typical 60-80% MBU)
    "decode_mbu": 0.7,
    # fixed per-iteration overhead in s (scheduler, launches, sampling)
    "iteration_overhead_s": 0.004,
    # latency of one all-reduce (two per layer under TP), s
    "allreduce_latency_s": 8e-6,
    # share of a prefill's time that scales with the SM clock (f_max/f); the rest (HBM traffic,
    # attention reads, synchronisation) does not. Equal to prefill_mfu: the tensor cores are busy
    # that share of the time. Checks against POLCA's A100 characterization (down-clocking cuts
    # peak power up to 20% for <= 7% performance loss, arXiv 2308.12908): here -20% prefill power
    # at ~1240 MHz costs +6.6% prefill time (all of it clock-bound: +13.7%, twice the paper's)
    "prefill_clock_bound_share": 0.5,
    # share of a memory-bound decode's time that does not scale with the SM clock
    "memory_bound_flat_share": 0.9,
    # fraction of HBM given to weights + KV cache (vLLM gpu_memory_utilization default)
    "gpu_memory_utilization": 0.9,
    # core (clock-scaled) and memory (clock-independent) activity of a prefill, of (TDP - idle)
    "prefill_core_activity": 0.85,
    "prefill_memory_activity": 0.15,
    # decode activity: core base + core per batch fill, memory; batch fill saturates at this batch
    "decode_core_activity_base": 0.2,
    "decode_core_activity_full": 0.2,
    "decode_memory_activity": 0.25,
    "decode_saturation_batch": 64.0,
    # core voltage at the lowest DVFS level relative to the maximum (V linear in f between them)
    "min_voltage_ratio": 0.65,
}


def _lookup(table: dict[str, Any], name: str, what: str, more: str = "") -> Any:
    """``table[name]`` (case-insensitive), or a ConfigError listing the valid names (and ``more``)."""
    try:
        return table[name.lower()]
    except KeyError:
        raise ConfigError(f"{what} {name!r}; valid: {', '.join(table)}{more}") from None


def gpu_spec(name: str) -> GpuSpec:
    """The spec of a built-in GPU.

    Raises:
        ConfigError: unknown name (lists the valid ones).
    """
    return _lookup(GPUS, name, "--profile: unknown GPU", ", or a profile file (.json/.csv)")


def model_spec(name: str) -> ModelSpec:
    """The spec of a built-in model.

    Raises:
        ConfigError: unknown name (lists the valid ones).
    """
    return _lookup(MODELS, name, "--model: unknown model")
