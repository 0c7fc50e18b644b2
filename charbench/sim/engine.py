"""The discrete-event cluster simulator: instances with iteration-level batching, routing, power.

::

    sim = Simulator(profile, workload, policy, SimSettings(max_num_seqs=128))
    result = sim.run()          # SimResult: per-request arrays, bins, energy, counters

Each instance runs iterations like vLLM with chunked prefill (Sarathi): an iteration with
prefill work carries every running decode plus up to ``chunk_tokens - B`` prompt tokens; an
iteration without it decodes the ``B`` running sequences. Every iteration is one forward and
pays the fixed cost once: a prefill-only one ``prefill_fixed_s + P * prefill_per_token_s``, a
hybrid one ``max(prefill_fixed_s, decode_fixed_s) + P * prefill_per_token_s + B *
decode_per_seq_s + C * decode_per_ctx_token_s``, a decode one the same without ``P``. Consecutive decode iterations
with the same batch are one event (a "macro-step"): their times form an arithmetic series
(each iteration reads ``B`` more KV tokens), so the end of ``k`` iterations is closed-form
and an arrival or a frequency change cuts the macro-step at the iteration in flight. Events
are therefore O(requests), not O(tokens).

KV cache: a request is admitted when its prompt (plus tokens already generated, after a
preemption) fits; when the running batch's next iteration would overflow the cache, the
most recently admitted sequence is preempted (recompute, as vLLM) and re-queued first.

Power: one piecewise-constant value per instance (idle, prefill, decode with ``B``
sequences, from the profile at the instance's frequency; a hybrid iteration draws the
time-weighted mean of its prefill part at prefill power and its decode part at decode
power, so its energy is the sum of the two parts'); energy is the exact integral,
accumulated per segment and spread into fixed bins (:class:`charbench.sim.timeline.Bins`).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from charbench.sim.timeline import Bins

if TYPE_CHECKING:  # annotations only: profiles calibrates with this engine (charbench.sim.calibrate)
    from charbench.sim.profiles import OperatingPoint, Profile

ROUTINGS: tuple[str, ...] = ("least-outstanding", "round-robin")

_STEP, _TICK, _READY = 0, 1, 2
#: arrivals turned into Python objects at a time (bounds their memory, whatever the trace length)
ARRIVAL_CHUNK = 1 << 16


@dataclass
class Workload:
    """Requests to simulate (sorted by arrival).

    Attributes:
        arrival_s: arrival times in s from 0.
        input_len: prompt tokens.
        output_len: output tokens (>= 1).
        duration_s: the span the trace covers (energy is integrated over at least this).
        source: where the requests come from (provenance).
    """

    arrival_s: np.ndarray
    input_len: np.ndarray
    output_len: np.ndarray
    duration_s: float
    source: str = ""

    def __len__(self) -> int:
        return len(self.arrival_s)


@dataclass
class SimSettings:
    """Engine settings shared by every policy.

    Attributes:
        max_num_seqs: most sequences an instance runs at once (vLLM ``max_num_seqs``).
        chunk_tokens: tokens per iteration with prefill work (decodes included).
        routing: ``least-outstanding`` or ``round-robin`` within a pool.
        bin_s: width of the timeline bins in s.
        gpus_per_row: GPUs per power row (POLCA's row of servers).
        spinup_s: time a new instance takes to load weights before serving.
        reshard_s: time a tensor-parallel re-shard takes.
        freq_change_s: stall of an instance while its SM clock changes.
        record_segments: keep every power segment (tests: energy == integral of power).
        progress: called with (simulated s, requests done) about every 2% of the arrivals.
    """

    max_num_seqs: int = 128
    chunk_tokens: int = 512
    routing: str = "least-outstanding"
    bin_s: float = 10.0
    gpus_per_row: int = 320
    spinup_s: float = 60.0
    reshard_s: float = 60.0
    freq_change_s: float = 0.05
    record_segments: bool = False
    progress: Callable[[float, int], None] | None = None


class Instance:
    """One model replica of ``tp`` GPUs (the engine's mutable state)."""

    __slots__ = ("iid", "pool", "tp", "freq", "op", "row", "ready_at", "accepting", "draining", "alive", "created",
                 "waiting", "prefill", "running", "fin_heap", "iter", "kv_run", "kv_pre", "busy", "version",
                 "kind", "t0", "a", "b", "k", "ptoks", "power", "seg_t", "energy_j", "cfg_t", "stall_s", "outstanding")

    def __init__(self, iid: int, pool: int, tp: int, freq: float, op: OperatingPoint, row: int, t: float, ready_at: float) -> None:
        self.iid, self.pool, self.tp, self.freq, self.op, self.row = iid, pool, tp, freq, op, row
        self.created, self.ready_at = t, ready_at
        self.accepting = ready_at <= t
        self.draining = False
        self.alive = True
        self.waiting: deque[int] = deque()
        self.prefill: deque[list[int]] = deque()  # [rid, tokens left, tokens reserved]
        self.running: dict[int, int] = {}  # rid -> decode iteration at which it finishes
        self.fin_heap: list[tuple[int, int]] = []
        self.iter = 0
        self.kv_run = 0
        self.kv_pre = 0
        self.busy = False
        self.version = 0
        self.kind = 0  # 0 idle, 1 prefill/hybrid, 2 decode macro-step
        self.t0 = self.a = self.b = 0.0
        self.k = 0
        self.ptoks = 0
        self.power = op.idle_w
        self.seg_t = t
        self.energy_j = 0.0
        self.cfg_t = t
        self.stall_s = 0.0
        self.outstanding = 0


@dataclass
class SimResult:
    """What one simulation produced (arrays per request; bins per pool/row).

    ``ttft_s``/``tpot_s``/``e2e_s`` are NaN for a request that never finished (none does in
    a completed run: the simulation drains every request).
    """

    arrival_s: np.ndarray
    input_len: np.ndarray
    output_len: np.ndarray
    pool: np.ndarray
    first_token_s: np.ndarray
    finish_s: np.ndarray
    preemptions: np.ndarray
    finish_count: np.ndarray
    end_s: float
    energy_j: float
    reconfig_energy_j: float
    peak_power_w: float
    max_kv_fraction: float
    gpu_seconds: float
    bins: Bins
    pools: int
    rows: int
    counters: dict[str, int]
    extra: dict[str, Any] = field(default_factory=dict)
    segments: list[tuple[int, float, float, float]] | None = None

    @property
    def ttft_s(self) -> np.ndarray:
        """Time to first token per request."""
        return self.first_token_s - self.arrival_s

    @property
    def e2e_s(self) -> np.ndarray:
        """End-to-end latency per request."""
        return self.finish_s - self.arrival_s

    @property
    def tpot_s(self) -> np.ndarray:
        """Mean time between output tokens per request (0 for one-token outputs)."""
        gaps = np.maximum(self.output_len - 1, 1)
        return np.where(self.output_len > 1, (self.finish_s - self.first_token_s) / gaps, 0.0)


class Simulator:
    """Runs one policy on one workload with one profile (see the module docstring)."""

    def __init__(self, profile: Profile, workload: Workload, policy: Any, settings: SimSettings) -> None:
        if settings.routing not in ROUTINGS:
            raise ValueError(f"routing {settings.routing!r}: valid {', '.join(ROUTINGS)}")
        self.profile, self.wl, self.policy, self.s = profile, workload, policy, settings
        n = len(workload)
        self.n = n
        # Per-request memory is the trace's own compact arrays plus the results' (about 40 B
        # a request); Python objects exist only for requests in flight (``live``) and for the
        # current chunk of arrivals, so a week of requests costs tens of MB, not hundreds.
        self.pool_of = np.asarray(policy.assign_pools(workload), dtype=np.int64)
        self.npools = int(policy.num_pools)
        self.first = np.full(n, math.nan)
        self.finish = np.full(n, math.nan)
        self.preempt = np.zeros(n, dtype=np.int32)
        self.fin_count = np.zeros(n, dtype=np.int8)
        #: rid -> [input tokens, output tokens, pool, tokens generated before the current admission]
        self.live: dict[int, list[int]] = {}
        self.t = 0.0
        self.done = 0
        self.heap: list[tuple[float, int, int, Any, int]] = []
        self.seq = 0
        self.instances: list[Instance] = []
        self.pools: list[list[Instance]] = [[] for _ in range(self.npools)]
        self.rr = [0] * self.npools
        self.rows = max(1, math.ceil(max(1, policy.initial_gpus) / settings.gpus_per_row))
        self.row_gpus = [0] * self.rows
        self.row_power = [0.0] * self.rows
        self.row_energy = [0.0] * self.rows  # closed segments only; row_energy_j adds the open ones
        self.cluster_power = 0.0
        self.peak_power = 0.0
        self.energy_j = 0.0
        self.reconfig_energy_j = 0.0
        self.gpu_seconds = 0.0
        self.max_kv_fraction = 0.0
        self.counters: dict[str, int] = {"instances_added": 0, "instances_removed": 0, "reshards": 0, "freq_change_count": 0, "preemption_count": 0}
        # channels: arrivals, then per pool energy, instance-s, freq*instance-s; then per row energy
        self.ch_pool_e, self.ch_pool_i, self.ch_pool_f = 1, 1 + self.npools, 1 + 2 * self.npools
        self.ch_row = 1 + 3 * self.npools
        self.bins = Bins(settings.bin_s, self.ch_row + self.rows, workload.duration_s)
        self.segments: list[tuple[int, float, float, float]] | None = [] if settings.record_segments else None
        self._op_cache: dict[tuple[int, float], OperatingPoint] = {}

    # ---- helpers used by policies -----------------------------------------------------------

    def op(self, tp: int, freq: float) -> OperatingPoint:
        """The profile's operating point (cached)."""
        key = (tp, freq)
        op = self._op_cache.get(key)
        if op is None:
            op = self._op_cache[key] = self.profile.point(tp, freq)
        return op

    def add_instance(self, pool: int, tp: int, freq: float, delay_s: float = 0.0) -> Instance:
        """Create an instance in ``pool``; it serves after ``delay_s`` (spin-up or re-shard)."""
        t = self.t
        row = min(range(self.rows), key=self.row_gpus.__getitem__)
        inst = Instance(len(self.instances), pool, tp, freq, self.op(tp, freq), row, t, t + delay_s)
        self.row_gpus[row] += tp
        self.instances.append(inst)
        self.pools[pool].append(inst)
        self._power_change(inst, t, inst.op.idle_w, opened=True)
        if delay_s > 0:
            self.counters["instances_added"] += 1
            self._push(t + delay_s, _READY, inst, 0)
        return inst

    def drain(self, inst: Instance) -> None:
        """Stop routing to ``inst``; it is removed once its requests finish."""
        inst.accepting = False
        inst.draining = True
        if not inst.busy and inst.outstanding == 0:
            self._remove(inst, self.t)

    def set_freq(self, inst: Instance, freq: float) -> None:
        """Change ``inst``'s SM clock from the next iteration (a ``freq_change_s`` stall)."""
        if freq == inst.freq or not inst.alive:
            return
        self._close_cfg(inst, self.t)
        inst.freq, inst.op = freq, self.op(inst.tp, freq)
        inst.stall_s += self.s.freq_change_s
        self.counters["freq_change_count"] += 1
        if inst.busy:
            self._cut(inst, self.t)
        elif inst.kind == 0:
            self._power_change(inst, self.t, inst.op.idle_w)

    def accepting(self, pool: int) -> list[Instance]:
        """Instances of ``pool`` that take new requests."""
        return [i for i in self.pools[pool] if i.accepting]

    def schedule(self, t: float, fn: Callable[[Simulator, float], None]) -> None:
        """Call ``fn(sim, t)`` at simulated time ``t``."""
        self._push(t, _TICK, fn, 0)

    def row_power_w(self, row: int) -> float:
        """Instantaneous power of a row."""
        return self.row_power[row]

    def row_energy_j(self, row: int) -> float:
        """Energy a row has drawn from 0 to now (J): what a power meter's energy counter reads."""
        t = self.t
        return self.row_energy[row] + sum(i.power * (t - i.seg_t) for i in self.instances if i.alive and i.row == row)

    # ---- internals --------------------------------------------------------------------------

    def _push(self, t: float, kind: int, obj: Any, version: int) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, kind, obj, version))

    def _power_change(self, inst: Instance, t: float, p: float, opened: bool = False) -> None:
        if opened:
            self.row_power[inst.row] += p
            self.cluster_power += p
            inst.power, inst.seg_t = p, t
        else:
            old = inst.power
            if t > inst.seg_t:
                self._account(inst, inst.seg_t, t, old)
            inst.seg_t = t
            if p == old:
                return
            inst.power = p
            self.row_power[inst.row] += p - old
            self.cluster_power += p - old
        if self.cluster_power > self.peak_power:
            self.peak_power = self.cluster_power

    def _account(self, inst: Instance, t0: float, t1: float, p: float) -> None:
        e = p * (t1 - t0)
        inst.energy_j += e
        self.energy_j += e
        self.row_energy[inst.row] += e
        if t0 < inst.ready_at:  # before it serves: spin-up / re-shard energy
            self.reconfig_energy_j += p * (min(t1, inst.ready_at) - t0)
        self.bins.add_span(self.ch_pool_e + inst.pool, t0, t1, p)
        self.bins.add_span(self.ch_row + inst.row, t0, t1, p)
        if self.segments is not None:
            self.segments.append((inst.iid, t0, t1, p))

    def _close_cfg(self, inst: Instance, t: float) -> None:
        if t > inst.cfg_t:
            self.bins.add_span(self.ch_pool_i + inst.pool, inst.cfg_t, t, 1.0)
            self.bins.add_span(self.ch_pool_f + inst.pool, inst.cfg_t, t, inst.freq)
            self.gpu_seconds += inst.tp * (t - inst.cfg_t)
        inst.cfg_t = t

    def _remove(self, inst: Instance, t: float) -> None:
        self._power_change(inst, t, inst.power)
        self._close_cfg(inst, t)
        self.row_power[inst.row] -= inst.power
        self.cluster_power -= inst.power
        inst.power = 0.0
        inst.alive = False
        self.row_gpus[inst.row] -= inst.tp
        self.pools[inst.pool].remove(inst)
        self.counters["instances_removed"] += 1

    def _route(self, rid: int) -> Instance:
        pool = self.live[rid][2]
        cands = [i for i in self.pools[pool] if i.accepting]
        if not cands:  # a policy must keep one accepting instance per pool; fall back to any
            cands = [i for i in self.instances if i.accepting]
            if not cands:
                raise RuntimeError(f"policy {self.policy.name}: no instance accepts requests at t={self.t:.3f} s")
        if self.s.routing == "round-robin":
            self.rr[pool] += 1
            return cands[self.rr[pool] % len(cands)]
        return min(cands, key=lambda i: i.outstanding)

    def _arrive(self, rid: int, t: float) -> None:
        inst = self._route(rid)
        inst.outstanding += 1
        inst.waiting.append(rid)
        self.bins.add_point(0, t)
        if not inst.busy:
            self._boundary(inst, t)
        elif inst.kind == 2 and self._admissible(inst, rid):
            self._cut(inst, t)

    def _admissible(self, inst: Instance, rid: int) -> bool:
        return (len(inst.running) + len(inst.prefill) < self._max_batch(inst)
                and inst.kv_run + inst.kv_pre + self.live[rid][0] + self.live[rid][3] + 1 <= inst.op.kv_capacity_tokens)

    def _max_batch(self, inst: Instance) -> int:
        return min(self.s.max_num_seqs, inst.op.max_batch)

    def _cut(self, inst: Instance, t: float) -> None:
        """End the decode macro-step in flight at the iteration running at ``t``."""
        if inst.kind != 2 or inst.k <= 1:
            return
        a, b, k = inst.a, inst.b, inst.k
        e = t - inst.t0
        if e <= 0:
            j = 0
        elif b > 0:
            c = a - b / 2
            j = int((-c + math.sqrt(c * c + 2 * b * e)) / b)
        else:
            j = int(e / a)
        while j > 0 and j * a + b * j * (j - 1) / 2 > e:
            j -= 1
        while (j + 1) * a + b * (j + 1) * j / 2 <= e:
            j += 1
        nk = min(k, j + 1)
        if nk < k:
            inst.k = nk
            inst.version += 1
            self._push(inst.t0 + nk * a + b * nk * (nk - 1) / 2, _STEP, inst, inst.version)

    def _finish_step(self, inst: Instance, t: float) -> None:
        if inst.kind == 2:
            inst.iter += inst.k
            inst.kv_run += len(inst.running) * inst.k
        elif inst.kind == 1:
            b = len(inst.running)
            if b:
                inst.iter += 1
                inst.kv_run += b
            budget = inst.ptoks
            while budget > 0 and inst.prefill:
                ent = inst.prefill[0]
                take = min(ent[1], budget)
                ent[1] -= take
                budget -= take
                if ent[1] > 0:
                    break
                inst.prefill.popleft()
                rid = ent[0]
                inst.kv_pre -= ent[2]
                inst.kv_run += ent[2]
                req = self.live[rid]
                if req[3] == 0:
                    self.first[rid] = t  # the prefill emits the first token
                left = req[1] - req[3] - 1
                if left <= 0:
                    self._complete(inst, rid, t, ent[2])
                else:
                    fi = inst.iter + left
                    inst.running[rid] = fi
                    heapq.heappush(inst.fin_heap, (fi, rid))
        inst.kind = 0
        inst.busy = False

    def _complete(self, inst: Instance, rid: int, t: float, kv: int) -> None:
        self.finish[rid] = t
        self.fin_count[rid] += 1
        del self.live[rid]
        inst.kv_run -= kv
        inst.outstanding -= 1
        self.done += 1

    def _boundary(self, inst: Instance, t: float) -> None:
        """Between iterations: retire finished sequences, admit, preempt, start the next iteration."""
        h, run = inst.fin_heap, inst.running
        while h and h[0][0] <= inst.iter:
            fi, rid = heapq.heappop(h)
            if run.get(rid) != fi:
                continue  # stale: preempted since
            del run[rid]
            req = self.live[rid]
            self._complete(inst, rid, t, req[0] + req[1])
        while h and run.get(h[0][1]) != h[0][0]:
            heapq.heappop(h)
        cap = inst.op.kv_capacity_tokens
        mb = self._max_batch(inst)
        while inst.waiting and len(run) + len(inst.prefill) < mb:
            rid = inst.waiting[0]
            req = self.live[rid]
            need = req[0] + req[3]
            if inst.kv_run + inst.kv_pre + need + 1 > cap:
                break
            inst.waiting.popleft()
            inst.prefill.append([rid, need, need + 1])
            inst.kv_pre += need + 1
        used = (inst.kv_run + inst.kv_pre) / cap
        if used > self.max_kv_fraction:
            self.max_kv_fraction = used
        op = inst.op
        stall, inst.stall_s = inst.stall_s, 0.0
        if inst.prefill:
            b = len(run)
            while b and inst.kv_run + inst.kv_pre + b > cap:
                self._preempt(inst)
                b = len(run)
            budget = max(1, self.s.chunk_tokens - b)
            ptoks = min(budget, sum(e[1] for e in inst.prefill))
            power = op.prefill_w
            if b:
                # one forward: its fixed cost (launch/framework overhead, all-reduce latency, the
                # weight read) is paid once, not once for the prefill part and again for the decodes
                dur = ptoks * op.prefill_per_token_s
                dec = max(op.prefill_fixed_s, op.decode_fixed_s) + b * op.decode_per_seq_s + inst.kv_run * op.decode_per_ctx_token_s
                # a hybrid iteration's energy is its prefill part at prefill power plus its decode
                # part at decode power: a chunk carrying a few prompt tokens draws about decode power
                power = (dur * op.prefill_w + dec * op.decode_power_w(b)) / (dur + dec)
                dur += dec
            else:
                dur = op.prefill_fixed_s + ptoks * op.prefill_per_token_s
            inst.kind, inst.ptoks, inst.busy = 1, ptoks, True
            self._power_change(inst, t, power)
            inst.version += 1
            self._push(t + stall + dur, _STEP, inst, inst.version)
            return
        if run:
            b = len(run)
            free = cap - inst.kv_run - inst.kv_pre
            while free < b:
                self._preempt(inst)
                b = len(run)
                free = cap - inst.kv_run - inst.kv_pre
                if not b:
                    return self._boundary(inst, t)
            while run.get(h[0][1]) != h[0][0]:
                heapq.heappop(h)  # preempted entries
            k = min(h[0][0] - inst.iter, free // b)
            a = op.decode_fixed_s + b * op.decode_per_seq_s + inst.kv_run * op.decode_per_ctx_token_s
            bb = b * op.decode_per_ctx_token_s
            inst.kind, inst.busy, inst.t0, inst.a, inst.b, inst.k = 2, True, t + stall, a, bb, k
            self._power_change(inst, t, op.decode_power_w(b))
            inst.version += 1
            self._push(t + stall + k * a + bb * k * (k - 1) / 2, _STEP, inst, inst.version)
            return
        inst.kind = 0
        self._power_change(inst, t, op.idle_w)
        if inst.draining and inst.outstanding == 0:
            self._remove(inst, t)

    def _preempt(self, inst: Instance) -> None:
        rid, fi = inst.running.popitem()  # the most recently admitted
        req = self.live[rid]
        gen = req[1] - (fi - inst.iter)
        inst.kv_run -= req[0] + gen
        req[3] = gen
        self.preempt[rid] += 1
        self.counters["preemption_count"] += 1
        inst.waiting.appendleft(rid)

    def _ready(self, inst: Instance, t: float) -> None:
        if not inst.alive:
            return
        inst.accepting = not inst.draining
        self.policy.on_ready(self, inst)

    # ---- main loop --------------------------------------------------------------------------

    def run(self) -> SimResult:
        """Simulate every request to completion."""
        self.policy.setup(self)
        for period, fn in self.policy.periods():
            self._push(period, _TICK, _Periodic(period, fn), 0)
        n, heap, wl = self.n, self.heap, self.wl
        i = 0
        step = max(1, n // 50)
        lo = hi = 0  # the chunk of arrivals held as Python objects: [lo, hi)
        arr: list[float] = []
        inp: list[int] = []
        out: list[int] = []
        pools: list[int] = []
        live = self.live
        nxt = float(wl.arrival_s[0]) if n else math.inf
        pop = heapq.heappop
        while self.done < n:
            if heap and heap[0][0] < nxt:
                t, _, kind, obj, ver = pop(heap)
                self.t = t
                if kind == _STEP:
                    if ver == obj.version and obj.alive:
                        self._finish_step(obj, t)
                        self._boundary(obj, t)
                elif kind == _TICK:
                    obj(self, t)
                else:
                    self._ready(obj, t)
            else:
                if i >= n:
                    raise RuntimeError(f"simulation stalled with {n - self.done} request(s) unfinished at t={self.t:.1f} s")
                if i >= hi:
                    lo, hi = i, min(n, i + ARRIVAL_CHUNK)
                    arr = wl.arrival_s[lo:hi].tolist()
                    inp = np.asarray(wl.input_len[lo:hi], dtype=np.int64).tolist()
                    out = np.asarray(wl.output_len[lo:hi], dtype=np.int64).tolist()
                    pools = self.pool_of[lo:hi].tolist()
                j = i - lo
                live[i] = [inp[j], out[j], pools[j], 0]
                self.t = nxt
                self._arrive(i, nxt)
                i += 1
                j += 1
                nxt = arr[j] if j < hi - lo else (float(wl.arrival_s[i]) if i < n else math.inf)
                if self.s.progress is not None and i % step == 0:
                    self.s.progress(self.t, self.done)
        end = max(self.t, float(self.wl.duration_s))
        for inst in self.instances:
            if inst.alive:
                self._power_change(inst, end, inst.power)
                self._close_cfg(inst, end)
        return SimResult(
            arrival_s=self.wl.arrival_s, input_len=self.wl.input_len, output_len=self.wl.output_len, pool=self.pool_of,
            first_token_s=self.first, finish_s=self.finish, preemptions=self.preempt, finish_count=self.fin_count, end_s=end, energy_j=self.energy_j, reconfig_energy_j=self.reconfig_energy_j,
            peak_power_w=self.peak_power, max_kv_fraction=self.max_kv_fraction, gpu_seconds=self.gpu_seconds, bins=self.bins,
            pools=self.npools, rows=self.rows, counters=dict(self.counters), extra=self.policy.summary(self), segments=self.segments,
        )


class _Periodic:
    """A policy's controller: called every ``period`` s while requests remain."""

    __slots__ = ("period", "fn")

    def __init__(self, period: float, fn: Callable[[Simulator, float], None]) -> None:
        self.period, self.fn = period, fn

    def __call__(self, sim: Simulator, t: float) -> None:
        self.fn(sim, t)
        sim._push(t + self.period, _TICK, self, 0)
