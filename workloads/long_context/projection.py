"""Analytic projection of TTFT, TBT and memory to 1M-10M tokens on GPU clusters (projected, not measured).

A roofline model per layout ``(tp, spp, kvp)`` of Llama-3-8B/70B (:data:`charbench.sim.hardware.MODELS`)
on A100/H100/H200 nodes of 8 GPUs (:data:`charbench.sim.hardware.GPUS`), bf16:

* prefill FLOPs: linear ``2 P N`` (Kaplan et al. 2020, 2 FLOPs per parameter per token;
  embedding included) + causal attention ``2 L h N^2`` (QK^T and PV over the lower triangle,
  2 FLOPs per multiply-add). TP splits both; SPP splits layers into stages and pipelines the
  chunks (``(n + spp - 1) / n`` of ``1/spp``, Mnemosyne v5 §3.3); KVP splits only attention
  (every KVP rank runs the linear layers of the replicated query).
* decode (batch 1): weights ``2 P / tp`` bytes and KV ``N * kv_bytes / (tp kvp)`` bytes read
  from HBM at ``decode_mbu`` of its bandwidth; the stages run one after another.
* communication: TP all-reduces 2 per layer of ``[T, h]`` bf16 (ring ``2 (n-1)/n``) on NVLink;
  KVP merges ``[T, h]`` outputs + LSEs per layer, SPP sends ``[chunk, h]`` per stage boundary,
  on InfiniBand when the group spans nodes (``tp * kvp > 8`` or ``spp > 1``), else NVLink.
* efficiencies: ``prefill_mfu``/``decode_mbu``/latencies from :data:`charbench.sim.hardware.ASSUMPTIONS`,
  times the parallel efficiencies this run measured (:class:`Calibration`): ``eta_spp`` per
  doubling of stages on prefill compute, ``eta_kvp`` per doubling of KVP on decode attention,
  ``eta_tp`` per doubling of TP; 1.0 where the run did not measure the layout (uncalibrated).

Example::

    p = project(model_spec("llama-3-8b"), gpu_spec("h100"), (8, 4, 2), 10 * 2**20, Calibration())
    p.ttft_s, p.tbt_s, p.memory_per_gpu_bytes, p.fits
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from charbench.sim.hardware import ASSUMPTIONS, GpuSpec, ModelSpec

GPUS_PER_NODE = 8
#: InfiniBand per GPU, one direction: DGX A100 has one 200 Gb/s HDR NIC per GPU, DGX H100/H200 one
#: 400 Gb/s NDR NIC per GPU (NVIDIA DGX A100 / DGX H100 user guides) -> bytes/s
IB_BW_BYTES_S = {"a100": 200e9 / 8, "h100": 400e9 / 8, "h200": 400e9 / 8}
#: one message's latency across nodes (typical RDMA small-message latency, assumption)
IB_LATENCY_S = 5e-6
#: prefill chunk of the projected runs (the paper's Sarathi baselines use 512 and 2048)
PROJECTION_CHUNK = 2048
BF16 = 2.0

#: layouts ``(tp, spp, kvp)`` of the projection table (the paper's TP8 nodes, SPP/KVP across nodes)
LAYOUTS: tuple[tuple[int, int, int], ...] = ((8, 1, 1), (8, 2, 1), (8, 4, 1), (8, 8, 1), (8, 1, 2), (8, 4, 2), (8, 4, 4))


@dataclass(frozen=True)
class Calibration:
    """Parallel efficiencies per doubling of each degree, measured by this run (1.0 = ideal).

    Attributes:
        eta_spp: SPP prefill efficiency (ideal TTFT ratio / measured ratio at spp=2).
        eta_kvp: KVP decode efficiency (ideal TBT ratio / measured ratio at kvp=2).
        eta_tp: TP efficiency (ideal / measured at tp=2).
        source: how each was measured (or "uncalibrated").
    """

    eta_spp: float = 1.0
    eta_kvp: float = 1.0
    eta_tp: float = 1.0
    source: str = "uncalibrated (ideal scaling)"


@dataclass(frozen=True)
class Projection:
    """One projected configuration (every value projected, none measured).

    Attributes:
        ttft_s: prefill of the whole context.
        tbt_s: one decode step at that context.
        chunk_iteration_s: one iteration of a 512-token chunk at that context plus a decode.
        memory_per_gpu_bytes: weights + KV per GPU.
        fits: memory within ``gpu_memory_utilization`` of HBM.
        gpus: GPUs used.
    """

    ttft_s: float
    tbt_s: float
    chunk_iteration_s: float
    memory_per_gpu_bytes: float
    fits: bool
    gpus: int


def _ring(n: int) -> float:
    return 2.0 * (n - 1) / n if n > 1 else 0.0


def _scaled(eta: float, degree: int) -> float:
    """Efficiency at ``degree`` from the per-doubling one: ``eta ** log2(degree)``."""
    return eta ** math.log2(degree) if degree > 1 else 1.0


def _links(gpu: GpuSpec, tp: int, spp: int, kvp: int) -> tuple[float, float, float]:
    """(TP link, KVP link, SPP link) bandwidths in bytes/s."""
    ib = IB_BW_BYTES_S.get(gpu.name, 50e9)
    nv = gpu.nvlink_bw_bytes_s
    return nv, (ib if tp * kvp > GPUS_PER_NODE else nv), (ib if tp * kvp * spp > GPUS_PER_NODE else nv)


def prefill_flops(model: ModelSpec, n: int) -> tuple[float, float]:
    """(linear, attention) FLOPs of a causal prefill of ``n`` tokens."""
    return 2.0 * model.params * n, 2.0 * model.layers * model.hidden * float(n) * n


def project(model: ModelSpec, gpu: GpuSpec, layout: tuple[int, int, int], context: int, calib: Calibration,
            chunk: int = PROJECTION_CHUNK) -> Projection:
    """Projected TTFT, TBT and memory of ``model`` on ``gpu`` nodes in ``layout`` at ``context`` tokens."""
    tp, spp, kvp = layout
    a = ASSUMPTIONS
    flops_s = gpu.peak_bf16_flops * a["prefill_mfu"]
    bw = gpu.hbm_bw_bytes_s * a["decode_mbu"]
    tp_bw, kvp_bw, spp_bw = _links(gpu, tp, spp, kvp)
    eta_tp, eta_spp, eta_kvp = _scaled(calib.eta_tp, tp), _scaled(calib.eta_spp, spp), _scaled(calib.eta_kvp, kvp)
    lin, attn = prefill_flops(model, context)
    n_chunks = max(1, math.ceil(context / chunk))
    bubble = (n_chunks + spp - 1) / n_chunks
    compute = (lin / tp + attn / (tp * kvp)) / spp * bubble / flops_s / (eta_tp * eta_spp)
    act = context * model.hidden * BF16  # [N, h] bf16
    layers_per_stage = model.layers / spp
    comm = 2 * layers_per_stage * act * _ring(tp) / tp_bw + layers_per_stage * act * _ring(kvp) / kvp_bw
    comm += (spp - 1) * chunk * model.hidden * BF16 / spp_bw
    ttft = compute + comm
    weights_t = model.weight_bytes / tp / bw
    kv_t = context * model.kv_bytes_per_token / (tp * kvp) / bw
    lat = 2 * model.layers * a["allreduce_latency_s"] * (tp > 1) + model.layers * IB_LATENCY_S * (kvp > 1) + (spp - 1) * IB_LATENCY_S
    tbt = (weights_t / eta_tp + kv_t / (eta_tp * eta_kvp)) + lat + a["iteration_overhead_s"]
    c_lin, c_attn = 2.0 * model.params * 512, 4.0 * model.layers * model.hidden * 512.0 * context
    chunk_it = (c_lin / tp + c_attn / (tp * kvp)) / flops_s / (eta_tp * eta_kvp) + tbt
    mem = model.weight_bytes / (tp * spp) + context * model.kv_bytes_per_token / (tp * spp * kvp)
    return Projection(ttft, tbt, chunk_it, mem, mem <= gpu.hbm_bytes * a["gpu_memory_utilization"], tp * spp * kvp)


def ideal_prefill_ratio(lin: float, attn: float, spp: int, kvp: int, tp: int, n_chunks: int) -> float:
    """TTFT of a layout over 1x1x1's under perfect scaling (SPP bubble included)."""
    base = lin + attn
    par = (lin / tp + attn / (tp * kvp)) / spp * (n_chunks + spp - 1) / n_chunks
    return par / base


def ideal_decode_ratio(lin: float, attn: float, tp: int, kvp: int) -> float:
    """Decode step of a layout over 1x1x1's under perfect scaling (stages run in sequence)."""
    return (lin / tp + attn / (tp * kvp)) / (lin + attn)
