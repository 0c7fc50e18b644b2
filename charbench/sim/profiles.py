"""Performance/power profiles: what one instance's iteration costs at a (tp, SM frequency) setting.

A profile answers :meth:`Profile.point` with an :class:`OperatingPoint`: linear coefficients
the engine evaluates per iteration (prefill time per chunk, decode iteration time, power per
state). Two sources::

    prof = analytic_profile("h100", "llama-2-70b")         # public specs + frequency model
    prof = measured_profile(Path("h100.json"), kv_capacity_tokens=200_000)   # serve-sweep --export-profile
    op = prof.point(tp=8, freq_mhz=1600)                   # ProfileRangeError outside the table

Frequency model (analytic): compute-bound time scales as f_max/f (a prefill's clock-bound
share, ``prefill_clock_bound_share``, of it; the rest waits on memory); a memory-bound decode
keeps ``memory_bound_flat_share`` of its time independent of f; core dynamic power scales as
f * V(f)^2 with V linear in f between the lowest and the highest DVFS level; memory power does
not scale with the SM clock.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from charbench.errors import ConfigError
from charbench.sim.hardware import ASSUMPTIONS, GpuSpec, ModelSpec, gpu_spec, model_spec

#: tensor-parallel degrees the analytic profiles consider (one 8-GPU server at most)
TP_CHOICES: tuple[int, ...] = (1, 2, 4, 8)


class ProfileRangeError(ConfigError):
    """A query outside what a profile covers (the message names the axis, the value and the range)."""


@dataclass(frozen=True)
class OperatingPoint:
    """Costs of one instance (``tp`` GPUs) at one SM frequency; all times in s, powers in W.

    Iteration time: a chunk of ``n`` prefill tokens costs ``prefill_fixed_s + n *
    prefill_per_token_s``; a decode iteration over ``B`` sequences holding ``C`` context tokens
    in all costs ``decode_fixed_s + B * decode_per_seq_s + C * decode_per_ctx_token_s``; an
    iteration carrying both is one forward and pays ``max(prefill_fixed_s, decode_fixed_s)`` once
    (:mod:`charbench.sim.engine`).
    Power (the whole instance): idle, prefilling, decoding ``B`` sequences
    (``min(decode_max_w, decode_base_w + B * decode_per_seq_w)``).
    """

    tp: int
    freq_mhz: float
    prefill_fixed_s: float
    prefill_per_token_s: float
    decode_fixed_s: float
    decode_per_seq_s: float
    decode_per_ctx_token_s: float
    idle_w: float
    prefill_w: float
    decode_base_w: float
    decode_per_seq_w: float
    decode_max_w: float
    kv_capacity_tokens: int
    max_batch: int

    def decode_power_w(self, batch: int) -> float:
        """Instance power while decoding ``batch`` sequences."""
        return min(self.decode_max_w, self.decode_base_w + batch * self.decode_per_seq_w)


@dataclass
class Profile:
    """A source of operating points for one (model, GPU).

    Attributes:
        name: what the user passed (``h100``, a file name).
        model: the model name.
        gpu: the GPU name (``unknown`` for a measured profile without one).
        kind: ``analytic`` or ``measured``.
        tps: tensor-parallel degrees covered.
        freq_levels_mhz: SM frequencies controllers may choose (ascending).
        provenance: what each number comes from (shown in the report).
        power_measured: False when the source has no power (energy results are then null).
        calibration: how a measured profile was calibrated (per group; see :mod:`.calibrate`).
    """

    name: str
    model: str
    gpu: str
    kind: str
    tps: tuple[int, ...]
    freq_levels_mhz: tuple[float, ...]
    provenance: dict[str, str]
    power_measured: bool = True
    calibration: dict[str, Any] = field(default_factory=dict)
    _builder: Any = None

    @property
    def max_freq_mhz(self) -> float:
        """The highest frequency covered."""
        return self.freq_levels_mhz[-1]

    def point(self, tp: int, freq_mhz: float) -> OperatingPoint:
        """The operating point at ``tp`` GPUs and ``freq_mhz``.

        Raises:
            ProfileRangeError: ``tp`` or ``freq_mhz`` outside the profile.
        """
        if tp not in self.tps:
            raise ProfileRangeError(f"profile {self.name}: tp {tp} is not covered (covered: {', '.join(map(str, self.tps))}); choose one of them")
        lo, hi = self.freq_levels_mhz[0], self.freq_levels_mhz[-1]
        if not lo - 1e-9 <= freq_mhz <= hi + 1e-9:
            raise ProfileRangeError(f"profile {self.name}: sm_freq_mhz {freq_mhz:g} is outside the profile's range [{lo:g}, {hi:g}] MHz")
        return self._builder(tp, float(freq_mhz))


def _voltage_ratio(gpu: GpuSpec, f: float) -> float:
    vmin = ASSUMPTIONS["min_voltage_ratio"]
    span = gpu.max_sm_freq_mhz - gpu.min_sm_freq_mhz
    x = min(1.0, max(0.0, (f - gpu.min_sm_freq_mhz) / span))
    return vmin + (1.0 - vmin) * x


def core_power_scale(gpu: GpuSpec, f: float) -> float:
    """Core dynamic power at ``f`` relative to the maximum clock: (f/f_max) * (V(f)/V_max)^2."""
    return (f / gpu.max_sm_freq_mhz) * _voltage_ratio(gpu, f) ** 2


def kv_capacity_tokens(gpu: GpuSpec, model: ModelSpec, tp: int) -> int:
    """KV-cache tokens an instance of ``tp`` GPUs holds after the weights (<= 0: the model does not fit)."""
    free = tp * gpu.hbm_bytes * ASSUMPTIONS["gpu_memory_utilization"] - model.weight_bytes
    return int(free // model.kv_bytes_per_token)


def prefill_slow(f_max_ratio: float) -> float:
    """Prefill time at a clock ``f_max / f_max_ratio`` relative to the maximum clock's (its clock-bound share scales)."""
    share = ASSUMPTIONS["prefill_clock_bound_share"]
    return share * f_max_ratio + 1.0 - share


def _analytic_point(gpu: GpuSpec, model: ModelSpec, max_batch: int, tp: int, f: float) -> OperatingPoint:
    a = ASSUMPTIONS
    slow = gpu.max_sm_freq_mhz / f  # compute-bound time ~ 1/f
    mem_slow = a["memory_bound_flat_share"] + (1.0 - a["memory_bound_flat_share"]) * slow
    comm_fixed = 2 * model.layers * a["allreduce_latency_s"] if tp > 1 else 0.0
    # bytes all-reduced per token: two per layer, hidden * 2 bytes, ring factor 2(tp-1)/tp
    comm_per_token = (2 * model.layers * model.hidden * 2.0 * 2 * (tp - 1) / tp / gpu.nvlink_bw_bytes_s) if tp > 1 else 0.0
    flops_per_token = 2.0 * model.params
    bw = gpu.hbm_bw_bytes_s * a["decode_mbu"]
    s = core_power_scale(gpu, f)
    dyn = gpu.tdp_w - gpu.idle_w
    sat = a["decode_saturation_batch"]
    base = gpu.idle_w + dyn * (a["decode_core_activity_base"] * s + a["decode_memory_activity"])
    return OperatingPoint(
        tp=tp,
        freq_mhz=f,
        prefill_fixed_s=a["iteration_overhead_s"] + comm_fixed,
        prefill_per_token_s=flops_per_token / (tp * gpu.peak_bf16_flops * a["prefill_mfu"]) * prefill_slow(f_max_ratio=slow) + comm_per_token,
        decode_fixed_s=model.weight_bytes / tp / bw * mem_slow + a["iteration_overhead_s"] + comm_fixed,
        decode_per_seq_s=flops_per_token / (tp * gpu.peak_bf16_flops * a["decode_mfu"]) * slow + comm_per_token,
        decode_per_ctx_token_s=model.kv_bytes_per_token / tp / bw * mem_slow,
        idle_w=tp * gpu.idle_w,
        prefill_w=tp * (gpu.idle_w + dyn * (a["prefill_core_activity"] * s + a["prefill_memory_activity"])),
        decode_base_w=tp * base,
        decode_per_seq_w=tp * dyn * a["decode_core_activity_full"] * s / sat,
        decode_max_w=tp * (base + dyn * a["decode_core_activity_full"] * s),
        kv_capacity_tokens=kv_capacity_tokens(gpu, model, tp),
        max_batch=max_batch,
    )


def analytic_profile(gpu_name: str, model_name: str, max_batch: int = 256) -> Profile:
    """A built-in profile from public specs (see :mod:`charbench.sim.hardware`).

    Only the tensor-parallel degrees at which the model's weights fit, with room for at least
    one full-context request, are covered.

    Raises:
        ConfigError: unknown GPU or model, or a model that fits on no tp of one server.
    """
    gpu, model = gpu_spec(gpu_name), model_spec(model_name)
    tps = tuple(tp for tp in TP_CHOICES if kv_capacity_tokens(gpu, model, tp) >= model.max_context)
    if not tps:
        raise ConfigError(f"--model {model.name}: does not fit on up to {TP_CHOICES[-1]} {gpu.name} GPUs ({model.weight_bytes / 1e9:.0f} GB of weights)")
    levels = tuple(sorted(set(gpu.freq_levels_mhz)))
    prov = {
        "gpu": gpu.source,
        "model": model.source,
        "frequency_model": "compute time ~ f_max/f (prefill: its clock-bound share); memory-bound decode time nearly flat; core power ~ f*V(f)^2, V linear in f",
        "assumptions": ", ".join(f"{k}={v:g}" for k, v in ASSUMPTIONS.items()),
    }
    builder = functools.lru_cache(maxsize=None)(functools.partial(_analytic_point, gpu, model, max_batch))
    return Profile(gpu.name, model.name, gpu.name, "analytic", tps, levels, prov, _builder=builder)


# ---------------------------------------------------------------------------------------------
# measured profiles (serve-sweep --export-profile)

_COEFFS = ("prefill_fixed_s", "prefill_per_token_s", "decode_fixed_s", "decode_per_seq_s", "decode_per_ctx_token_s",
           "idle_w", "prefill_w", "decode_base_w", "decode_per_seq_w", "decode_max_w")


def _fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares (intercept, slope); a single x (or all equal) gives slope 0."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx <= 0:
        return my, 0.0
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return my - slope * mx, slope


def _entry_float(e: dict[str, Any], key: str, path: Path) -> float:
    v = e.get(key)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        raise ConfigError(f"--profile {path}: an entry (tp {e.get('tp')}, sm_freq_mhz {e.get('sm_freq_mhz')}) has no {key}; re-export it from a serving sweep whose loads completed")
    return float(v)


def _entry_power(e: dict[str, Any]) -> float:
    """The entry's mean power, NaN when it was not measured (serve-sweep without a readable meter)."""
    v = e.get("mean_power_w")
    return float(v) if isinstance(v, (int, float)) and math.isfinite(float(v)) else math.nan


def _coeffs_from_entries(entries: list[dict[str, Any]], path: Path, chunk_tokens: int) -> tuple[dict[str, float], int, dict[str, Any]]:
    """Fit one (tp, frequency) group (see :func:`measured_profile`); returns (coefficients, max batch, calibration report)."""
    from charbench.sim.calibrate import calibrate

    batch, tpot, power = [], [], []
    for e in entries:
        rps, e2el = _entry_float(e, "request_throughput_rps", path), _entry_float(e, "median_e2el_ms", path)
        ttft = _entry_float(e, "median_ttft_ms", path)
        batch.append(max(1.0, rps * max(0.0, e2el - ttft) / 1000.0))  # Little's law: sequences decoding
        tpot.append(_entry_float(e, "median_tpot_ms", path) / 1000.0)
        power.append(_entry_power(e))
    d0, d1 = _fit_line(batch, tpot)
    light = min(range(len(entries)), key=lambda i: batch[i])
    inp = max(1.0, float(entries[light].get("input_len") or 1))
    ttft = _entry_float(entries[light], "median_ttft_ms", path) / 1000.0
    max_batch = max(int(e.get("max_num_seqs") or 1) for e in entries)
    measured_power = [(b, p) for b, p in zip(batch, power) if math.isfinite(p)]
    if measured_power:
        p0, p1 = _fit_line([b for b, _ in measured_power], [p for _, p in measured_power])
        pw = {"idle_w": max(0.0, p0), "prefill_w": max(p for _, p in measured_power), "decode_base_w": max(0.0, p0),
              "decode_per_seq_w": max(0.0, p1), "decode_max_w": max(p for _, p in measured_power)}
    else:  # not measured: NaN, so every energy figure of the simulation is null with that reason
        pw = {k: math.nan for k in ("idle_w", "prefill_w", "decode_base_w", "decode_per_seq_w", "decode_max_w")}
    # the engine runs a prefill in one forward, which pays the same fixed cost as a decode one
    # (framework and launch overhead): a lone prompt's TTFT is decode_fixed + prompt x per-token
    d0 = max(1e-6, d0)
    first = OperatingPoint(tp=int(entries[0].get("tp") or 1), freq_mhz=0.0, prefill_fixed_s=d0,
                           prefill_per_token_s=max(0.0, ttft - d0) / inp, decode_fixed_s=d0,
                           decode_per_seq_s=max(0.0, d1), decode_per_ctx_token_s=0.0, kv_capacity_tokens=1 << 40,
                           max_batch=max_batch, **pw)
    op, report = calibrate(entries, first, max_batch, chunk_tokens)
    coeffs = {k: float(getattr(op, k)) for k in _COEFFS}
    return coeffs, max_batch, report


def interpolate(table: dict[float, dict[str, float]], x: float, axis: str, name: str) -> dict[str, float]:
    """Linear interpolation of a coefficient table between its two neighbouring keys.

    Raises:
        ProfileRangeError: ``x`` outside [min key, max key] (the message names ``axis``).
    """
    keys = sorted(table)
    if not keys[0] - 1e-9 <= x <= keys[-1] + 1e-9:
        raise ProfileRangeError(f"profile {name}: {axis} {x:g} is outside the table's range [{keys[0]:g}, {keys[-1]:g}]")
    for lo, hi in zip(keys, keys[1:]):
        if lo <= x <= hi:
            w = (x - lo) / (hi - lo)
            return {k: table[lo][k] * (1 - w) + table[hi][k] * w for k in table[lo]}
    return dict(table[keys[0]])


def measured_profile(path: Path, kv_capacity_tokens: int, model: str | None = None, default_freq_mhz: float = 0.0,
                     chunk_tokens: int = 512) -> Profile:
    """A profile fitted from serve-sweep's ``--export-profile`` file (``charbench.profiles`` format).

    Per (tp, SM frequency) group: a first guess in closed form (decode iteration time linear
    in the decode batch, which is throughput x (median E2E - median TTFT) by Little's law,
    fitted to median TPOT; every forward, prefill or decode, pays that fit's intercept as its
    fixed cost; prefill time per token from the lightest load's median TTFT less it), then
    calibrated against the simulator on the group's open-loop loads
    (:mod:`charbench.sim.calibrate`): the simulated median TPOT and TTFT of each load are
    brought to the measured ones. ``chunk_tokens`` is the serving engine's token budget per
    iteration (``max_num_batched_tokens``; the profile does not record it).
    Power is fitted linear in the decode batch; idle power is that fit's intercept
    (serve-sweep does not record idle), so it is labelled estimated. A profile without
    measured power (``mean_power_w`` null: no readable meter) has NaN power and
    ``power_measured`` False: energy figures simulated with it are null, never 0.
    Entries without a locked clock (``sm_freq_mhz`` null) get ``default_freq_mhz``.

    Raises:
        ConfigError: unreadable file, no usable entry, several models without ``model``.
    """
    from charbench.profiles import load_profile

    path = Path(path)
    entries = load_profile(path)
    models = sorted({str(e.get("model")) for e in entries})
    if model is None:
        if len(models) != 1:
            raise ConfigError(f"--profile {path}: holds models {', '.join(models)}; pick one with --model")
        model = models[0]
    entries = [e for e in entries if str(e.get("model")) == model and (e.get("error_frac") or 0) < 1]
    if not entries:
        raise ConfigError(f"--profile {path}: no entry for model {model!r} (models: {', '.join(models) or 'none'})")
    groups: dict[int, dict[float, list[dict[str, Any]]]] = {}
    for e in entries:
        f = e.get("sm_freq_mhz")
        groups.setdefault(int(e.get("tp") or 1), {}).setdefault(float(f) if f is not None else default_freq_mhz, []).append(e)
    tables: dict[int, dict[float, dict[str, float]]] = {}
    max_batch = 1
    calibration: dict[str, Any] = {}
    for tp, by_f in groups.items():
        tables[tp] = {}
        for f, es in by_f.items():
            tables[tp][f], mb, calibration[f"tp{tp}@{f:g}MHz"] = _coeffs_from_entries(es, path, chunk_tokens)
            max_batch = max(max_batch, mb)
    power_measured = all(math.isfinite(c["prefill_w"]) for t in tables.values() for c in t.values())
    freqs = sorted({f for t in tables.values() for f in t})
    name = path.name

    def build(tp: int, f: float) -> OperatingPoint:
        c = interpolate(tables[tp], f, "sm_freq_mhz", name)
        return OperatingPoint(tp=tp, freq_mhz=f, kv_capacity_tokens=int(kv_capacity_tokens), max_batch=max_batch, **c)

    prov = {
        "measured": f"measured serving profile {name} ({len(entries)} entries)",
        "decode_time": "linear in the decode batch, calibrated so simulated median TPOT = measured (charbench.sim.calibrate)",
        "prefill_time": "per token, calibrated so simulated median TTFT = measured at the open-loop loads",
        "power": ("mean_power_w fitted linear in the decode batch; idle = intercept (estimated)" if power_measured
                  else "not measured (the profile's mean_power_w is null): energy, carbon and power are null"),
        "kv_capacity_tokens": f"{kv_capacity_tokens} (given, not in the profile)",
        "chunk_tokens": f"{chunk_tokens} (the engine's token budget per iteration; assumed, not in the profile)",
    }
    assert {f.name for f in fields(OperatingPoint)} >= set(_COEFFS)
    return Profile(name, model, "unknown", "measured", tuple(sorted(tables)), tuple(freqs), prov, power_measured=power_measured,
                   calibration=calibration, _builder=functools.lru_cache(maxsize=None)(build))


# ---------------------------------------------------------------------------------------------
# Vidur's measured MLP profiles (profiling_data/compute/<dataset>/snapshots/<id>/mlp.csv.xz)

#: per-layer operators of Vidur's mlp.csv (median ms each); ``emb`` runs once per iteration
VIDUR_LAYER_OPS: tuple[str, ...] = ("input_layernorm", "attn_pre_proj", "attn_rope", "attn_post_proj", "post_attention_layernorm",
                                    "mlp_up_proj", "mlp_act", "mlp_down_proj", "add")
#: decode batches are at most this many tokens; prefill chunks are fitted from here up
VIDUR_DECODE_MAX_TOKENS = 256


def _vidur_files(path: Path) -> tuple[Path, dict[str, Any]]:
    """(mlp.csv.xz, config.json contents) from the file itself, its snapshot folder or its dataset folder."""
    import json as _json

    path = Path(path)
    if path.is_dir():
        hits = sorted(path.glob("mlp.csv*")) or sorted(path.glob("snapshots/*/mlp.csv*"))
        if not hits:
            raise ConfigError(f"--profile {path}: no mlp.csv.xz in this folder or its snapshots/*/ (Vidur's profiling_data/compute/<dataset> layout)")
        path = hits[0]
    if not path.is_file():
        raise ConfigError(f"--profile {path}: file not found")
    cfg_file = path.parent / "config.json"
    cfg = _json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
    return path, cfg


def _vidur_model_name(hf_name: str) -> str:
    """``meta-llama/Llama-2-7b-hf`` -> ``llama-2-7b``; ``meta-llama/Meta-Llama-3-8B`` -> ``llama-3-8b``."""
    name = hf_name.split("/")[-1].lower()
    for prefix in ("meta-",):
        name = name.removeprefix(prefix)
    return name.removesuffix("-hf")


def vidur_profile(path: Path, gpu_name: str | None = None, model_name: str | None = None, max_batch: int = 256) -> Profile:
    """A profile whose iteration times come from Vidur's measured MLP operator profile.

    The linear layers, norms, rotary embedding and activations (Vidur's ``mlp.csv``, median
    ms per operator and layer, by token count and tensor-parallel degree) give the
    token-proportional costs: decode (1 token per sequence) is fitted over batches up to
    :data:`VIDUR_DECODE_MAX_TOKENS` tokens, prefill chunks above that; times the model's
    layer count, plus the embedding once. Attention (KV reads per context token), all-reduce,
    power and the frequency model are the analytic profile's (Vidur measures no power, and the
    attention tables staged with it are synthetic). Vidur profiles at the maximum clock: at a
    lower clock the per-token (compute-bound) part scales as f_max/f and the fixed
    (weight-read, memory-bound) part by the analytic memory-bound rule.

    Args:
        path: ``mlp.csv.xz``, its snapshot folder, or the dataset folder above ``snapshots/``.
        gpu_name, model_name: override the dataset's ``config.json`` (``device_sku``, ``model``).

    Raises:
        ConfigError: no such file, an unknown GPU or model, or a table without a usable tp.
    """
    import numpy as np
    import pandas as pd

    mlp, meta = _vidur_files(path)
    gpu = gpu_spec(gpu_name or str(meta.get("device_sku") or ""))
    model = model_spec(model_name or _vidur_model_name(str(meta.get("model") or "")))
    df = pd.read_csv(mlp)
    need = [f"time_stats.{op}.median" for op in (*VIDUR_LAYER_OPS, "emb")] + ["num_tokens", "num_tensor_parallel_workers"]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise ConfigError(f"--profile {mlp}: not a Vidur MLP profile (missing columns {', '.join(missing)})")
    df["iter_ms"] = df[[f"time_stats.{op}.median" for op in VIDUR_LAYER_OPS]].sum(axis=1) * model.layers + df["time_stats.emb.median"]
    fits: dict[int, tuple[float, float, float, float]] = {}
    for tp, g in df.groupby("num_tensor_parallel_workers"):
        tp = int(tp)
        if tp not in TP_CHOICES or kv_capacity_tokens(gpu, model, tp) < model.max_context:
            continue
        dec, pre = g[g["num_tokens"] <= VIDUR_DECODE_MAX_TOKENS], g[g["num_tokens"] >= VIDUR_DECODE_MAX_TOKENS]
        if len(dec) < 2 or len(pre) < 2:
            continue
        d1, d0 = np.polyfit(dec["num_tokens"], dec["iter_ms"], 1)
        p1, p0 = np.polyfit(pre["num_tokens"], pre["iter_ms"], 1)
        fits[tp] = (max(0.0, float(d0)) / 1e3, max(0.0, float(d1)) / 1e3, max(0.0, float(p0)) / 1e3, max(0.0, float(p1)) / 1e3)
    if not fits:
        raise ConfigError(f"--profile {mlp}: no tensor-parallel degree of the table fits {model.name} on {gpu.name} with a full context")
    a = ASSUMPTIONS

    def build(tp: int, f: float) -> OperatingPoint:
        base = _analytic_point(gpu, model, max_batch, tp, f)
        d0, d1, p0, p1 = fits[tp]
        slow = gpu.max_sm_freq_mhz / f
        mem_slow = a["memory_bound_flat_share"] + (1.0 - a["memory_bound_flat_share"]) * slow
        comm = base.prefill_fixed_s - a["iteration_overhead_s"]  # the analytic all-reduce latency (0 at tp 1)
        return dataclasses.replace(base, decode_fixed_s=d0 * mem_slow + comm + a["iteration_overhead_s"], decode_per_seq_s=d1 * slow,
                                   prefill_fixed_s=p0 * mem_slow + comm + a["iteration_overhead_s"], prefill_per_token_s=p1 * prefill_slow(slow))

    levels = tuple(sorted(set(gpu.freq_levels_mhz)))
    prov = {
        "measured": f"Vidur MLP operator profile {mlp} ({len(df)} rows; medians; {meta.get('model', '?')} on {meta.get('device_sku', '?')})",
        "iteration_time": f"linear layers/norms/rope/activation x {model.layers} layers + embedding, fitted per tp: decode <= "
                          f"{VIDUR_DECODE_MAX_TOKENS} tokens, prefill above (measured by Vidur at the maximum clock)",
        "attention_and_comm": "analytic (KV bytes / HBM bandwidth; all-reduce model): Vidur's staged attention tables are synthetic",
        "power": "analytic (estimated): Vidur measures no power",
        "frequency_model": "per-token part ~ f_max/f (prefill: its clock-bound share), fixed part memory-bound (nearly flat); core power ~ f*V(f)^2",
        "gpu": gpu.source,
        "model": model.source,
    }
    return Profile(f"vidur:{mlp.parent.parent.parent.name if mlp.parent.parent.name == 'snapshots' else mlp.name}", model.name, gpu.name,
                   "vidur-measured", tuple(sorted(fits)), levels, prov, _builder=functools.lru_cache(maxsize=None)(build))


def resolve_profile(spec: str, model: str, kv_capacity_tokens: int | None = None, max_batch: int = 256) -> Profile:
    """``a100|h100|h200`` (analytic), a serve-sweep profile file (``.json``/``.csv``), or a Vidur
    MLP profile (``vidur:PATH``, or a path to ``mlp.csv.xz`` or its dataset folder; the model
    is the dataset's, ``model`` is not used).

    Raises:
        ConfigError: an unknown name, a missing file, or a measured profile without ``kv_capacity_tokens``.
    """
    if spec.startswith("vidur:") or spec.lower().endswith((".csv.xz",)) or "vidur" in Path(spec).name and Path(spec).is_dir():
        return vidur_profile(Path(spec.removeprefix("vidur:")), max_batch=max_batch)  # the dataset names its model
    if spec.lower().endswith((".json", ".csv")):
        if not kv_capacity_tokens:
            raise ConfigError(f"--profile {spec}: a measured profile does not record the KV-cache size; give --kv-capacity-tokens")
        return measured_profile(Path(spec), kv_capacity_tokens, model=model)
    return analytic_profile(spec, model, max_batch=max_batch)
