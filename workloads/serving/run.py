"""``ServeSweepStudy``: one sweep point = one engine/GPU configuration under one or more loads.

::

    from charbench.study import RunSettings, run_study
    study = ServeSweepStudy(cfg)
    result = run_study(study, common, RunSettings(idle_baseline_s=1.0))

Per point: (re)start the built-in engine when a restart knob changed (``model``, ``tp``,
``dtype``, ``max_num_seqs``), lock the SM clock / set the power limit (restored at the
end, on failure and on Ctrl-C by the GPU control layer), warm up, then for each load of
the mode: build the workload (lengths, exact-token prompts, arrival times), run it with
two energy windows open (the whole load, and the steady state, opened and closed live by
:class:`~charbench.workloads.serving.metrics.SteadyTracker`), compute the metrics, and
save the per-request details to ``requests/<point_key>[__<step>].parquet`` in the run folder.

Sends are timed against their schedule (``send_lateness_*_ms``). With the in-process
engine the dispatcher shares the GIL with the engine loop thread (the switch interval is
shortened to 0.5 ms during loads), so lateness is larger than against a server in another
process; latencies are always measured from the actual send.

Energy is this machine's: for a URL target on another host the energy fields are null
with that reason. With ``tp > 1`` the meters cover GPUs ``i .. i+tp-1`` (the idle
baseline and the sampler timeline cover the run's first GPU only, so the net energy of
such points is null with that reason).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
import time
from typing import Any, Callable

import numpy as np

from charbench.errors import ConfigError, PointFailedError
from charbench.record import Record
from charbench.study import LiveWindows, Study
from charbench.sweep import expand, point_key
from charbench.workloads.serving import STUDY
from charbench.workloads.serving.arrivals import arrival_times
from charbench.workloads.serving.client import EngineTarget, HttpTarget, Target
from charbench.workloads.serving.config import MAX_RATE, ServeSweepConfig
from charbench.workloads.serving.lengths import fit_to_context, length_class, sample_lengths
from charbench.workloads.serving.loadgen import LoadPlan, LoadResult, WorkItem, run_load, warm_up
from charbench.workloads.serving.metrics import (
    ClientRecord,
    SteadyTracker,
    compute_metrics,
    energy_metrics,
    tokens_in_window,
)
from charbench.workloads.serving.modes import Load, run_sweep, slo_search
from charbench.workloads.serving.prompts import build_prompts

REQUESTS_DIR = "requests"
#: longest the open-loop schedules of a sweep may add up to without --max-duration (a week)
MAX_EXPECTED_SWEEP_S = 7 * 86_400.0
ENGINE_KNOBS: tuple[str, ...] = ("model", "tp", "dtype", "max_num_seqs")
_SAFE = re.compile(r"[^A-Za-z0-9_.=,+-]")

TargetFactory = Callable[[dict[str, Any], str], Target]


def requests_file_key(key: str, step: str | None) -> str:
    """File stem of a load's per-request artifact."""
    stem = key if not step else f"{key}__{step}"
    return _SAFE.sub("_", stem)


def _seed_of(*parts: Any) -> int:
    h = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:4], "little")


class ServeSweepStudy(Study):
    """LLM serving latency, throughput, power and energy across knobs."""

    name = STUDY.command
    report_hook = STUDY.report_hook
    #: one engine per combination of these knobs: the runner starts it once per group (Study.acquire)
    resource_knobs = ENGINE_KNOBS
    #: which weights each --model has is found at start-up (a test's fake target has none)
    derived_config_keys = ("engine_weights",)

    def __init__(self, cfg: ServeSweepConfig, target_factory: TargetFactory | None = None) -> None:
        """Args: cfg: validated here; target_factory: builds a target from engine knobs and
        the device (tests inject fakes; default: the built-in engine or the URL)."""
        cfg.normalize().validate()
        self.cfg = cfg
        self._factory = target_factory
        self._url_target: Target | None = None  # one probed server for the whole run (its knobs cannot vary)
        self._trace: Any = None
        self._control_used = False
        self.engine_start_count = 0
        #: ``--model`` -> ``random``/``checkpoint`` for the built-in engine (saved in config.json)
        self.engine_weights: dict[str, str] = {}
        # Checked now, before a run folder exists: a bad --model, --tp or --trace is a
        # usage error, not a failure of the first point after the idle baseline.
        if not cfg.is_url and target_factory is None:
            from charbench.engine.model import check_tp_divisible
            from charbench.engine.labels import CHECKPOINT, RANDOM
            from charbench.engine.runner import is_checkpoint, resolve_model_config
            from charbench.engine.tokenizer import load_tokenizer

            for m in cfg.model:
                model_cfg = resolve_model_config(str(m))
                for tp in cfg.tp:
                    check_tp_divisible(model_cfg, int(tp))
                if is_checkpoint(str(m)):  # a checkpoint without a usable tokenizer.json
                    load_tokenizer(str(m), model_cfg, checkpoint=True)
                self.engine_weights[str(m)] = CHECKPOINT if is_checkpoint(str(m)) else RANDOM
        self._check_expected_duration()
        if cfg.arrival == "trace":
            from pathlib import Path

            from charbench.workloads.serving.traces import load_azure_trace

            self._trace = load_azure_trace(Path(cfg.trace_file or ""), cfg.time_scale, cfg.trace_start_s, cfg.trace_duration_s, cfg.num_requests)

    def _check_expected_duration(self) -> None:
        """Refuse open-loop rates whose schedules alone would run for days (``--request-rate 1e-9``).

        Without ``--max-duration`` a point sends its last request about num_requests / rate
        seconds after its first; summed over the grid's points this must stay under
        :data:`MAX_EXPECTED_SWEEP_S`.

        Raises:
            ConfigError: naming --request-rate and the fixes.
        """
        c = self.cfg
        if c.max_duration_s is not None:
            return
        rates = [float(p["request_rate_rps"]) for p in self.points() if "request_rate_rps" in p]
        total = sum(c.num_requests / r for r in rates if math.isfinite(r))
        if total > MAX_EXPECTED_SWEEP_S:
            raise ConfigError(
                f"--request-rate {min(rates):g}: sending {c.num_requests} requests per point at these rates takes about "
                f"{total:.3g} s ({total / 86400:.3g} days) over {len(rates)} point(s), more than {MAX_EXPECTED_SWEEP_S / 86400:g} days; "
                "raise --request-rate, lower --num-requests, or cap each point with --max-duration SECONDS"
            )

    def config_dict(self) -> dict[str, Any]:
        """The config as saved in config.json: the max-throughput rate is ``"inf"``, as on the CLI and in point keys.

        JSON has no infinity; the text ``inf`` is the knob's one spelling everywhere
        (``--request-rate 4,inf``, TOML ``inf``, ``request_rate_rps=inf``, CSV ``inf``),
        and :meth:`ServeSweepConfig.normalize` reads it back as the float.
        """
        d = super().config_dict()
        d["request_rate_rps"] = [MAX_RATE if isinstance(r, float) and math.isinf(r) else r for r in d.get("request_rate_rps", [])]
        if self.engine_weights:
            d["engine_weights"] = dict(self.engine_weights)
        return d

    # -- points ------------------------------------------------------------------------
    def points(self) -> list[dict[str, Any]]:
        """Knobs in restart-cost order (engine knobs vary slowest), then the load."""
        c = self.cfg
        knobs: dict[str, Any] = {}
        if c.model:
            knobs["model"] = list(c.model)
        for k in ("tp", "dtype", "max_num_seqs"):
            if getattr(c, k):  # a URL target may leave them unknown
                knobs[k] = list(getattr(c, k))
        if c.sm_freq_mhz:
            knobs["sm_freq_mhz"] = list(c.sm_freq_mhz)
        if c.power_limit_w:
            knobs["power_limit_w"] = list(c.power_limit_w)
        if c.arrival != "trace" and not c.length_dist.startswith("azure-"):
            knobs["input_len"] = list(c.input_len)
            knobs["output_len"] = list(c.output_len)
        if c.mode == "grid":
            if c.arrival == "closed":
                knobs["concurrency"] = list(c.concurrency)
            elif c.arrival != "trace":
                knobs["request_rate_rps"] = list(c.request_rate_rps)
        return expand(knobs)

    # -- lifecycle ---------------------------------------------------------------------
    def setup(self, ctx: Any) -> None:
        """Check GPU-only knobs against the device; contact a URL target; report the trace."""
        c = self.cfg
        if (c.sm_freq_mhz or c.power_limit_w) and not getattr(ctx, "gpus", None):
            raise ConfigError("--sm-freq/--power-limit need a GPU; run with --device cuda (or drop them)")
        if self._trace is not None:
            ctx.log(f"trace: {len(self._trace)} requests of {self._trace.rows_in_file} from {self._trace.source}")
        if c.is_url and self._factory is None:
            # A dead or wrong target fails the run here, once, with the probe's message
            # (every point talks to the same server: its engine knobs cannot vary).
            points = self.points()
            if points:
                self._url_target = self._make_target(points[0], ctx)

    def teardown(self, ctx: Any) -> None:
        """Let go of the URL target (engines are released per group by the runner)."""
        if self._url_target is not None:
            self._url_target.shutdown()
            self._url_target = None

    def finalize(self, store: Any, ctx: Any) -> dict[str, Any]:
        """Write the cluster-sim profile when asked; return the best configurations."""
        from charbench.workloads.serving.profile import best_under_slo, export_profile

        recs = store.records()
        summary: dict[str, Any] = {"best_under_slo": best_under_slo(recs, self.cfg.slo_attainment)}
        if self.cfg.export_profile:
            from pathlib import Path

            path = export_profile(recs, Path(self.cfg.export_profile), run_id=store.meta.get("run_id"))
            summary["profile"] = str(path)
            ctx.log(f"profile written to {path}")
        return summary

    # -- targets: one resource group per engine configuration -----------------------------
    def acquire(self, group: dict[str, Any], ctx: Any) -> Target:
        """Start the engine of one group of points (or hand out the probed URL target)."""
        if self._url_target is not None:
            return self._url_target
        return self._make_target(group, ctx)

    def release(self, resource: Any, ctx: Any) -> None:
        """Stop a group's engine (the URL target is let go at teardown)."""
        if resource is not None and resource is not self._url_target:
            resource.shutdown()

    def _make_target(self, params: dict[str, Any], ctx: Any) -> Target:
        knobs = {k: params.get(k) for k in ENGINE_KNOBS}
        if self._factory is not None:
            target = self._factory(knobs, ctx.device)
        elif self.cfg.is_url:
            target = HttpTarget(
                self.cfg.target,
                api=self.cfg.api,
                model=params.get("model"),
                tokenizer=self.cfg.tokenizer,
                timeout_s=self.cfg.request_timeout_s,
                force_output_len=self.cfg.force_output_len,
            )
            target.probe()
        else:
            from charbench.engine.api import EngineConfig

            ecfg = EngineConfig(
                model=str(params["model"]),
                dtype=str(params["dtype"]),
                device=ctx.device,
                max_num_seqs=int(params["max_num_seqs"]),
                max_num_batched_tokens=self.cfg.max_num_batched_tokens,
                kv_cache_gb=self.cfg.kv_cache_gb,
                tp=int(params["tp"]),
                max_model_len=self.cfg.max_model_len,
                seed=ctx.seed,
                max_queue=max(1024, self.cfg.num_requests * 2),
            )
            ctx.log(f"starting the engine: model={ecfg.model} tp={ecfg.tp} dtype={ecfg.dtype} max_num_seqs={ecfg.max_num_seqs}")
            t0 = time.perf_counter()
            target = EngineTarget(ecfg)
            target.force_output_len = self.cfg.force_output_len
            ctx.log(f"engine ready in {time.perf_counter() - t0:.1f} s")
        self.engine_start_count += 1
        for warning in target.describe().warnings:
            ctx.log(f"warning: {warning}")
        return target

    def _target_for(self, params: dict[str, Any], ctx: Any) -> Target:
        """The group's target; one that died at an earlier point is started again."""
        target = ctx.resource
        if getattr(target, "dead", None) and target is not self._url_target:
            target = ctx.reacquire()
        if isinstance(target, HttpTarget) and params.get("model"):
            target.model = params["model"]
        return target

    # -- GPU control ---------------------------------------------------------------------
    def gpus(self, device: str) -> list[int] | None:
        """GPUs of the largest tensor-parallel point (so the baseline and sampler cover them all)."""
        from charbench.device import gpu_index

        first = gpu_index(device)
        tp_max = max((int(t) for t in (self.cfg.tp or [1])), default=1)
        if first is None or self.cfg.is_url or tp_max <= 1:
            return None
        return list(range(first, first + tp_max))

    def _gpus_for(self, params: dict[str, Any], ctx: Any) -> list[int]:
        base = list(getattr(ctx, "gpus", []) or [])
        tp = int(params.get("tp") or 1)
        if not base or self.cfg.is_url:
            return base
        return list(range(base[0], base[0] + tp))

    def _apply_gpu(self, params: dict[str, Any], ctx: Any, gpus: list[int]) -> dict[str, Any]:
        freq, watts = params.get("sm_freq_mhz"), params.get("power_limit_w")
        if freq is None and watts is None:
            if self._control_used:  # an earlier point changed settings: back to defaults
                ctx.restore_controls()
            return {}
        ctl = ctx.control_for(gpus)
        self._control_used = True
        ctl.restore()  # start from the defaults, then apply this point's settings
        out: dict[str, Any] = {}
        if freq is not None:
            ctl.lock_sm_clock(int(freq))
            out["sm_clock_locked_mhz"] = int(freq)
        if watts is not None:
            out["power_limit_enforced_w"] = float(ctl.set_power_limit(float(watts)))
        return out

    # -- one point -----------------------------------------------------------------------
    def run_point(self, params: dict[str, Any], ctx: Any) -> list[Record]:
        """Measure every load of the point's mode; returns one record per load."""
        key = point_key(params)
        target = self._target_for(params, ctx)
        gpus = self._gpus_for(params, ctx)
        gpu_fields = self._apply_gpu(params, ctx, gpus)
        warm = {"done": False}

        def measure(load: Load) -> Record:
            rec = self._measure(params, key, load, ctx, target, gpus, warmup=not warm["done"])
            warm["done"] = True
            rec.update(gpu_fields)
            return rec

        c = self.cfg
        if c.mode == "sweep":
            return run_sweep(measure, c.sweep_rates)
        if c.mode == "slo-search":
            return slo_search(measure, c.slo_attainment, c.search_iters, c.search_rel_tol, c.search_lo_frac)
        if c.arrival == "trace":
            load = Load("trace", None, "")
        elif c.arrival == "closed":
            load = Load("concurrency", int(params["concurrency"]), "")
        else:
            load = Load("rate", float(params["request_rate_rps"]), "")
        return [measure(load)]

    def _workload(self, params: dict[str, Any], load: Load, target: Target, key: str, ctx: Any) -> tuple[list[WorkItem], dict[str, Any]]:
        c = self.cfg
        seed = int(getattr(ctx, "seed", 0))
        info: dict[str, Any] = {}
        if load.kind == "trace":
            tr = self._trace
            inp = np.maximum(np.rint(tr.input_len * c.length_scale), 1).astype(np.int64)
            out = np.maximum(np.rint(tr.output_len * c.length_scale), 1).astype(np.int64)
            times: np.ndarray | None = np.asarray(tr.times_s, dtype=float)
            info["trace_mean_rate_rps"] = tr.mean_rate_rps
            info["workload_class"] = "trace"
        else:
            n = c.num_requests
            spec = c.length_spec(params.get("input_len", c.input_len[0]), params.get("output_len", c.output_len[0]))
            # Lengths and the unit-rate arrival pattern depend only on the run seed, so
            # points that differ in a knob see the same workload (paired comparisons).
            inp, out = sample_lengths(spec, n, seed)
            info["workload_class"] = length_class(spec, spec.input_len, spec.output_len)
            times = None
            if load.kind == "rate":
                process = c.arrival if c.arrival in ("poisson", "gamma", "constant") else "poisson"
                times = arrival_times(
                    n, float(load.value), process, c.burstiness, seed,  # type: ignore[arg-type]
                    rescale=c.rescale_arrivals, ramp_up_s=c.ramp_up_s, ramp_start_rps=c.ramp_start_rps,
                )
        inp, out, clipped = fit_to_context(inp, out, target.max_model_len)
        info["length_clipped_request_count"] = clipped
        form = c.prompt_format
        if form == "auto":
            form = "ids" if (c.api == "completions" and target.tokenizer is not None) else "text"
        # Prompts differ per point, so a server-side prefix cache cannot reuse them.
        prompts = build_prompts(target.tokenizer, inp, form, _seed_of(seed, key, load.step, "prompts"))
        info["prompt_format"] = form
        info["prompt_tokens_exact"] = all(p.exact for p in prompts)
        items = [
            WorkItem(i, p.prompt, int(a), p.prompt_tokens, int(b), None if times is None else float(times[i]))
            for i, (p, a, b) in enumerate(zip(prompts, inp, out))
        ]
        return items, info

    def _warmup_items(self, items: list[WorkItem]) -> list[WorkItem]:
        k = min(self.cfg.warmup_requests, len(items))
        return [WorkItem(i, items[i].prompt, items[i].input_len, items[i].prompt_tokens, min(4, items[i].output_len)) for i in range(k)]

    def _measure(self, params: dict[str, Any], key: str, load: Load, ctx: Any, target: Target, gpus: list[int], warmup: bool) -> Record:
        c = self.cfg
        items, info = self._workload(params, load, target, key, ctx)
        mns = params.get("max_num_seqs") or getattr(target, "max_num_seqs", None)
        wins = LiveWindows(ctx, gpus or None)
        wname = requests_file_key(key, load.step)
        tracker = SteadyTracker(
            len(items), int(mns) if mns else len(items) + 1,
            on_open=lambda t: wins.begin(f"{wname}:steady", t),
            on_close=lambda t: wins.end(f"{wname}:steady", t),
        )
        if not mns:
            tracker.unknown_reason = "the target's max_num_seqs is unknown; pass --max-num-seqs N (its batch limit) to measure the steady state"
        plan = LoadPlan(
            items,
            closed_concurrency=int(load.value) if load.kind == "concurrency" else None,  # type: ignore[arg-type]
            max_concurrency=c.max_concurrency,
            id_prefix=f"{wname[:40]}-{int(time.time() * 1e3) % 10**9}",
            max_duration_s=c.max_duration_s,
        )
        warm_items = self._warmup_items(items) if warmup else []

        async def drive() -> tuple[LoadResult, int]:
            async with target.session():
                warm_errors = await warm_up(target, warm_items) if warm_items else 0
                wins.begin(f"{wname}:point")
                try:
                    res = await run_load(target, plan, tracker)
                finally:
                    wins.end(f"{wname}:point")
                await target.server_records(res.records)
                return res, warm_errors

        try:
            result, warm_errors = asyncio.run(drive())
        finally:
            wins.abandon()
        records = result.records
        if not records:
            raise PointFailedError(
                f"--max-duration {c.max_duration_s:g}: no request of this load ({load.step or load.kind}) was due within it; "
                "raise --max-duration or --request-rate"
            )
        metrics = compute_metrics(records, slo=c.slo)
        if metrics["completed_count"] == 0:
            first = next((r.error for r in records if r.error), "no request produced a token")
            raise PointFailedError(f"the target served no request of this load ({load.step or load.kind}); first error: {first}")
        rec = Record()
        rec.set("mode_step", load.step or "grid")
        rec.set("load_kind", load.kind)
        if load.kind == "rate":
            rate = float(load.value)  # type: ignore[arg-type]
            # inf is the knob's own value for max throughput (all at once), kept as-is in the record
            rec.set("request_rate_rps", rate, allow_inf=True)
            rec.set("offered_load", "all at once" if math.isinf(rate) else f"{rate:.4g} req/s")
        elif load.kind == "concurrency":
            rec.set("concurrency", int(load.value))  # type: ignore[arg-type]
            rec.set("offered_load", f"{int(load.value)} users")  # type: ignore[arg-type]
        else:
            rec.set("offered_load", "trace")
        rec.set("arrival", c.arrival if load.kind != "concurrency" else "closed")
        rec.set("burstiness", c.burstiness if rec["arrival"] == "gamma" else None, reason=f"arrival {rec['arrival']} has no burstiness (gamma only)")
        rec.update({"max_concurrency": c.max_concurrency, "length_dist": c.length_dist if load.kind != "trace" else "trace",
                    "warmup_error_count": warm_errors, "truncated": result.unsent > 0, "unsent_request_count": result.unsent})
        rec.set("max_duration_s", c.max_duration_s, reason="no --max-duration: every planned request was sent")
        rec.update(info)
        rec.merge(target.describe())  # with its warnings and null reasons
        rec.set("engine_start_count", self.engine_start_count)
        rec.merge(metrics)
        rec.update(result.lateness)
        rec.set("point_t0_s", result.origin_s)
        rec.set("point_t1_s", result.end_s)
        self._energy_fields(rec, wins, wname, records, tracker, target)
        self._server_fields(rec, records)
        rec.set("requests_file", self._save_requests(ctx, wname, records, result.origin_s), reason="no run folder")
        return rec

    def _energy_fields(self, rec: Record, wins: LiveWindows, wname: str, records: list[ClientRecord], tracker: SteadyTracker,
                       target: Target) -> None:
        """Energy of the whole load and of its steady state, and what derives from them."""
        remote = None if target.local else f"the target {target.label} is not on this machine; its energy cannot be measured here"
        # whole point
        w = wins.closed.get(f"{wname}:point")
        failed = wins.errors.get(f"{wname}:point")  # the meter raised: the window holds no measurement
        if w is not None and remote is None and failed is None:
            rec.merge(w.fields())
        else:
            why = remote or (f"the energy meter failed: {failed}" if failed else "the point window was not measured")
            for k in ("energy_j", "mean_power_w", "energy_net_j"):
                rec.null(k, why)
        energy_metrics(rec, "total_output_tokens", "completed_count")
        # steady state
        rec.set("steady_t0_s", tracker.t_open, reason=tracker.reason_if_none() or "the steady window did not open")
        rec.set("steady_t1_s", tracker.t_close, reason=tracker.reason_if_none() or "the steady window did not close")
        window_keys = ("steady_time_s", "steady_energy_j", "mean_steady_power_w", "steady_energy_net_j")
        no_window = tracker.reason_if_none()
        sw = wins.closed.get(f"{wname}:steady")
        if no_window is not None or sw is None:
            why = no_window or wins.errors.get(f"{wname}:steady", "the steady window was not measured")
            for k in (*window_keys, "steady_output_tokens", "steady_output_throughput_tok_s"):
                rec.null(k, f"no steady state: {why}")
        else:
            toks = tokens_in_window(records, sw.t0_s, sw.t1_s)
            rec.set("steady_output_tokens", toks)
            rec.set("steady_time_s", sw.time_s)
            rec.derive("steady_output_throughput_tok_s", lambda n, t: n / t if t > 0 else None, "steady_output_tokens", "steady_time_s",
                       reason="steady window of zero length")
            meter_failed = wins.errors.get(f"{wname}:steady")
            if remote is not None or meter_failed is not None:
                for k in window_keys[1:]:
                    rec.null(k, remote or f"the energy meter failed: {meter_failed}")
            else:
                # the idle baseline covers every GPU of the sweep (Study.gpus), so subsets get net energy too
                rec.merge(sw.fields(prefix="steady_"))
        energy_metrics(rec, "steady_output_tokens", prefix="steady_")

    def _server_fields(self, rec: Record, records: list[ClientRecord]) -> None:
        """Client vs server timing (median differences), when the target reports its own."""
        pairs_ttft = [(r.ttft_ms, r.server.get("ttft_ms")) for r in records if r.ok and r.server and r.server.get("ttft_ms") is not None]
        pairs_itl: list[tuple[float, float]] = []
        for r in records:
            if r.ok and r.server and r.server.get("itl_ms"):
                c_itl, s_itl = r.itl_ms, list(r.server["itl_ms"])
                if len(c_itl) == len(s_itl):
                    pairs_itl.extend(zip(c_itl, s_itl))

        def median(values: list[float]) -> float | None:
            return float(np.median(values)) if values else None

        why = "the target reports no server-side request timing"
        c_t = [p[0] for p in pairs_ttft if p[0] is not None]
        rec.set("median_server_ttft_ms", median([p[1] for p in pairs_ttft]), reason=why)
        rec.set("median_ttft_client_minus_server_ms", median([a - b for a, b in pairs_ttft if a is not None]), reason=why)
        rec.set("median_client_joined_ttft_ms", median(c_t), reason=why)
        why = "no server-side token times matched the client's"
        rec.set("median_server_itl_ms", median([p[1] for p in pairs_itl]), reason=why)
        rec.set("median_itl_client_minus_server_ms", median([a - b for a, b in pairs_itl]), reason=why)
        queues = [r.server.get("queue_ms") for r in records if r.server and r.server.get("queue_ms") is not None]
        rec.set("median_server_queue_ms", median(queues), reason="the target reports no server-side queueing time")
        # a request whose server record lacks the count is unknown, not 0 preemptions
        preempt = [p for r in records if r.server and (p := r.server.get("preemptions")) is not None]
        rec.set("total_server_preemption_count", int(sum(preempt)) if preempt else None, reason="the target reports no preemption counts")

    def _save_requests(self, ctx: Any, stem: str, records: list[ClientRecord], origin: float) -> str | None:
        """Store the load's per-request rows as the run's table ``requests/<stem>``; returns its file (None: no run folder)."""
        store = getattr(ctx, "store", None)
        if store is None:
            return None
        import pandas as pd

        slo = self.cfg.slo

        def rel(t: float | None) -> float | None:
            return None if t is None else t - origin

        rows = []
        for r in records:
            s = r.server or {}
            rows.append({
                "index": r.index,
                "request_id": r.request_id,
                "server_id": r.server_id,
                "input_len": r.input_len,
                "prompt_tokens": r.prompt_tokens,
                "expected_output_tokens": r.expected_output_tokens,
                "output_tokens": r.output_tokens,
                "output_tokens_source": r.output_tokens_source,
                "scheduled_s": rel(r.scheduled_s),
                "send_s": rel(r.send_s),
                "first_token_s": rel(r.first_token_s),
                "end_s": rel(r.end_s),
                "ttft_ms": r.ttft_ms,
                "tpot_ms": r.tpot_ms,
                "e2el_ms": r.e2el_ms,
                "itl_ms": [float(x) for x in r.itl_ms],
                "error": r.error,
                "timed_out": r.timed_out,
                "good": r.meets(slo) if slo.given else None,
                "server_ttft_ms": s.get("ttft_ms"),
                "server_tpot_ms": s.get("tpot_ms"),
                "server_e2el_ms": s.get("e2el_ms"),
                "server_queue_ms": s.get("queue_ms"),
                "server_itl_ms": [float(x) for x in (s.get("itl_ms") or [])],
            })
        path = store.write_table(f"{REQUESTS_DIR}/{stem}", pd.DataFrame(rows))  # the run store is the folder's only writer
        return path.relative_to(store.path).as_posix()

