"""The gemm-power study: generate inputs, analyse their bits, run the GEMM for a while, measure.

One point = (experiment, swept value, dtype, backend, seed, repeat). For each point the
inputs are generated on the device (see :mod:`.generators`), their switching activity is
computed (:mod:`charbench.kernels.switching`), the backend's GEMM is warmed up and then kept
running for at least ``duration_s`` inside a measured window (energy counter delta, sampler
statistics), and the output is checked for NaN/Inf::

    study = GemmPowerStudy(resolve(cfg, "cpu"), device="cpu")
    result = run_study(study, common, settings)
"""

from __future__ import annotations

import math
from typing import Any

from charbench.errors import ConfigError, DeviceError, OutOfDeviceMemoryError, PointFailedError
from charbench.kernels.gemm import backends_for, get_backend, get_dtype, output_scale
from charbench.kernels.gemm.dtypes import DTypeSpec
from charbench.record import Record
from charbench.study import Context, Study
from charbench.workloads.gemm_power import STUDY
from charbench.workloads.gemm_power.config import GemmPowerConfig
from charbench.workloads.gemm_power.experiments import NON_GEMM_GENERATORS, get_experiment

GIB = 1024.0**3
#: the backend label of experiments 16-18 and idle (no GEMM runs)
NON_GEMM_BACKEND = "non-gemm"
#: a sweep larger than this is a typo (e.g. --repeats 100000000), not a measurement plan
MAX_POINTS = 1_000_000


def plan_pairs(cfg: GemmPowerConfig, device: str) -> list[tuple[str, str]]:
    """The (dtype, backend) pairs to run, in order; every requested dtype must be runnable.

    Raises:
        ConfigError: a dtype no requested backend implements, or one the device cannot run
            (the message says what it needs).
        DeviceError: a requested backend that cannot run here at all.
    """
    pairs: list[tuple[str, str]] = []
    backends = list(cfg.backends or ["torch"])
    for b in backends:
        be = get_backend(b)
        reason = be.probe(device)
        if reason:
            raise DeviceError(f"--backends {b}: {reason}")
    for dt in cfg.dtypes or []:
        spec = get_dtype(dt)
        implementing = [b for b in backends if dt in get_backend(b).dtypes]
        if not implementing:
            raise ConfigError(
                f"--dtypes {dt}: none of the requested backends ({', '.join(backends)}) implements it; "
                f"use --backends {','.join(backends_for(dt))}"
            )
        runnable = []
        reasons = []
        for b in implementing:
            why = get_backend(b).unavailable_reason(spec, device)
            (reasons if why else runnable).append(why or b)
        if not runnable:
            raise ConfigError(f"--dtypes {dt}: {reasons[0]}")
        pairs.extend((dt, b) for b in runnable)
    return pairs


def memory_needed_bytes(m: int, n: int, k: int, spec: DTypeSpec) -> tuple[int, int]:
    """(operand + output bytes, generation/analysis temporaries) for one point."""
    elem = spec.storage_bits // 8
    out_elem = 4 if spec.out_storage in ("float32", "int32") else 2
    operands = (m * k + k * n) * elem + m * n * out_elem
    # float32 draws, int64 bit-edit words, sort indices: ~24 bytes per element of the larger operand
    temps = 24 * max(m * k, k * n)
    return operands, temps


def free_memory_bytes(device: str) -> int | None:
    """Free memory on the device (GPU: cudaMemGetInfo; CPU: MemAvailable), None if unknown."""
    from charbench.device import memory_bytes

    mem = memory_bytes(device)
    return mem[0] if mem is not None else None


def check_memory(cfg: GemmPowerConfig, device: str) -> None:
    """Refuse a size that does not fit, before allocating anything.

    Raises:
        OutOfDeviceMemoryError: with the numbers.
    """
    m, n, k = (int(v) for v in cfg.size or [0, 0, 0])
    free = free_memory_bytes(device)
    if free is None:
        return
    for dt in cfg.dtypes or []:
        spec = get_dtype(dt)
        ops, temps = memory_needed_bytes(m, n, k, spec)
        # backends may copy an operand into another layout: one more B
        need = ops + temps + k * n * (spec.storage_bits // 8)
        if need > free:
            raise OutOfDeviceMemoryError(
                f"--size {m},{n},{k} with {dt}: needs about {need / GIB:.2f} GiB on {device} "
                f"(A, B, C {ops / GIB:.2f} GiB + generation temporaries {temps / GIB:.2f} GiB) "
                f"but only {free / GIB:.2f} GiB is free; use a smaller --size"
            )


def device_name(device: str) -> str:
    """The GPU's name, or the CPU model."""
    if device.startswith("cuda"):
        import torch

        idx = int(device.split(":", 1)[1]) if ":" in device else 0
        return str(torch.cuda.get_device_name(idx))
    from charbench.envinfo import _cpu_model

    return _cpu_model() or "cpu"


class GemmPowerStudy(Study):
    """Input-dependent GEMM power (Gregersen et al., SC24), across dtypes and kernels."""

    name = STUDY.command
    report_hook = STUDY.report_hook

    def __init__(self, cfg: GemmPowerConfig, device: str) -> None:
        """Args: cfg: a resolved config (see ``config.resolve``); device: ``cpu`` or ``cuda:i``."""
        self.cfg = cfg
        self.device = device
        self.pairs = plan_pairs(cfg, device)
        m, n, k = (int(v) for v in cfg.size or [256, 256, 256])
        for dt, be in self.pairs:
            why = get_backend(be).size_reason(m, n, k)
            if why:
                raise ConfigError(f"--size {m},{n},{k}: {why}")
        check_memory(cfg, device)
        n = self.point_count()
        if n > MAX_POINTS:
            raise ConfigError(
                f"gemm-power: {n} points ({len(self.pairs)} dtype/backend pair(s) x experiment values x "
                f"{len(cfg.seeds)} seed(s) x {cfg.repeats} repeat(s)) is more than {MAX_POINTS}; lower --repeats or --seeds"
            )
        self.calibration: Any = None
        if cfg.predict:
            from charbench.workloads.gemm_power.analysis import load_calibration

            self.calibration = load_calibration(cfg.predict)
        self.checks: dict[tuple[str, str], Any] = {}
        #: the last point's inputs and their analysis, reused by its next repeat (same seed: the same
        #: matrices), so a repeat costs its measurement only; one entry, so memory stays one point's
        self._inputs: tuple[tuple[Any, ...], Any] | None = None
        self._device_name = ""

    def _gemm_experiments(self) -> list[str]:
        return [n for n in self.cfg.experiments if get_experiment(n).generator not in NON_GEMM_GENERATORS]

    def _other_experiments(self) -> list[str]:
        return [n for n in self.cfg.experiments if get_experiment(n).generator in NON_GEMM_GENERATORS]

    def point_count(self) -> int:
        """How many points :meth:`points` would make (computed without building them)."""
        per_pair = {dt: sum(len(get_experiment(name).values(get_dtype(dt).family, self.cfg.sweep, get_dtype(dt).bits))
                            for name in self._gemm_experiments()) for dt, _ in self.pairs}
        others = sum(len(get_experiment(n).values("int8", self.cfg.sweep, 8)) for n in self._other_experiments())
        return (sum(per_pair[dt] for dt, _ in self.pairs) * len(self.cfg.seeds) + others) * int(self.cfg.repeats)

    def points(self) -> list[dict[str, Any]]:
        """Every (dtype, backend, experiment, value, seed, repeat), grouped by dtype/backend."""
        pts = []
        # experiments 16-18 and idle: once per run (int8 memory, no GEMM, no seed)
        for name in self._other_experiments():
            exp = get_experiment(name)
            for v in exp.values("int8", self.cfg.sweep, 8):
                for rep in range(self.cfg.repeats):
                    pts.append({"dtype": "int8", "backend": NON_GEMM_BACKEND, "experiment": name, "param": exp.param,
                                "value": float(v), "seed": 0, "repeat": rep})
        for dt, be in self.pairs:
            spec = get_dtype(dt)
            for name in self._gemm_experiments():
                exp = get_experiment(name)
                for v in exp.values(spec.family, self.cfg.sweep, spec.bits):
                    for seed in self.cfg.seeds:
                        for rep in range(self.cfg.repeats):
                            pts.append({"dtype": dt, "backend": be, "experiment": name, "param": exp.param,
                                        "value": float(v), "seed": int(seed), "repeat": rep})
        return pts

    def setup(self, ctx: Context) -> None:
        """Check every (dtype, backend) against float64 on fresh inputs; note the device."""
        self._device_name = device_name(self.device)
        if not self.cfg.check_correctness:
            return
        from charbench.kernels.reference import check_gemm

        # multiples of 128 (custom kernels); small enough to be instant on a CPU
        size = 256 if self.device.startswith("cuda") else 128
        for dt, be in self.pairs:
            try:
                res = check_gemm(get_backend(be), get_dtype(dt), self.device, size, size, size, seed=12345)
                self.checks[(dt, be)] = res
                ctx.log(f"correctness: {res.message}")
            except Exception as exc:  # recorded; the pair's points fail with the reason
                self.checks[(dt, be)] = exc
                ctx.log(f"correctness: {be} {dt} could not run: {type(exc).__name__}: {exc}")
        ctx.store.write_json("correctness.json", {
            f"{dt}/{be}": ({"ok": r.ok, "rel_error": r.rel_error, "bound": r.bound, "message": r.message}
                           if not isinstance(r, Exception) else {"ok": False, "error": f"{type(r).__name__}: {r}"})
            for (dt, be), r in self.checks.items()
        })

    def _other_size(self) -> tuple[int, int]:
        """Rows, cols of the int8 matrix of experiments 16-18: the paper's on a GPU with the paper sweep, else M x N."""
        m, n, _ = (int(v) for v in self.cfg.size or [256, 256, 256])
        return m, n

    def _run_other(self, params: dict[str, Any], ctx: Context) -> Record:
        """Experiments 16-18 and idle: memory resident / the XOR kernel / nothing, inside one window."""
        import time

        import torch

        from charbench.kernels.bitflip import get_flipper

        g = get_experiment(params["experiment"]).generator
        rows, cols = self._other_size()
        if g == "bit_flips" and self.device.startswith("cuda") and self.cfg.sweep == "paper":
            rows = cols = 16384  # IDP paper_expts.py: N = 2**14
        if g in ("memory_ones", "memory_zeros") and self.device.startswith("cuda") and self.cfg.sweep == "paper":
            rows = cols = 65536  # 2**16 int8: 4 GiB resident
        duration = float(self.cfg.duration_s or 1.0)
        rec: Record
        extra: dict[str, Any] = {"m": rows, "n": cols, "device_name": self._device_name}
        if g == "idle":
            with ctx.window("gemm") as w:
                time.sleep(duration)
            rec = w.fields()
        elif g in ("memory_ones", "memory_zeros"):
            t0 = time.perf_counter()
            x = torch.full((rows, cols), -1 if g == "memory_ones" else 0, dtype=torch.int8, device=self.device)  # a memory-write kernel
            if self.device.startswith("cuda"):
                torch.cuda.synchronize()
            extra["fill_ms"] = (time.perf_counter() - t0) * 1e3
            with ctx.window("gemm") as w:
                time.sleep(duration)  # resident, untouched: what the paper measured for 300 s
            rec = w.fields()
            extra["resident_bytes"] = int(x.numel())
            del x
        else:
            x = torch.zeros((rows, cols), dtype=torch.int8, device=self.device)
            flip, kernel = get_flipper(x, int(params["value"]))
            if self.cfg.warmup_s:
                ctx.timer.run_for_at_least(flip, float(self.cfg.warmup_s), warmup=1)
            with ctx.window("gemm") as w:
                loop = ctx.timer.run_for_at_least(flip, duration, warmup=0)
            rec = w.fields()
            extra.update({"kernel": kernel, "iteration_count": loop.iterations, "loop_s": loop.elapsed_s,
                          "time_per_launch_ms": loop.per_iter_s * 1e3,
                          "bytes_per_launch": 2 * rows * cols})  # read + write of every byte
        rec.update(extra)
        return rec

    def run_point(self, params: dict[str, Any], ctx: Context) -> Record:
        """Generate, analyse, warm up, measure one point; raises PointFailedError on a bad output."""
        from charbench.kernels.switching import field_switching_stats, switching_stats
        from charbench.workloads.gemm_power.generators import generate_pair

        if params["backend"] == NON_GEMM_BACKEND:
            return self._run_other(params, ctx)
        dt, be_name = params["dtype"], params["backend"]
        check = self.checks.get((dt, be_name))
        if check is not None and (isinstance(check, Exception) or not check.ok):
            why = check if isinstance(check, Exception) else check.message
            raise PointFailedError(f"backend {be_name} with {dt} failed its correctness check: {why}")
        spec = get_dtype(dt)
        exp = get_experiment(params["experiment"])
        m, n, k = (int(v) for v in self.cfg.size or [256, 256, 256])
        ident = (dt, params["experiment"], params["value"], params["seed"], m, n, k, ctx.seed)
        if self._inputs is not None and self._inputs[0] == ident:
            a, b, info, feats, alpha = self._inputs[1]
        else:
            self._inputs = None  # free the previous point's matrices before making new ones
            a, b, info = generate_pair(exp, params["value"], spec, m, n, k, params["seed"], self.device, base_seed=ctx.seed,
                                   generator=self.cfg.generator)
            feats = switching_stats(a, b, spec)
            feats.update(field_switching_stats(a, b, spec))
            alpha = output_scale(a, b, spec)
            self._inputs = (ident, (a, b, info, feats, alpha))
        backend = get_backend(be_name)
        acc_name, acc_why = accumulation(backend, spec, self.cfg.accumulate, self.device)
        if hasattr(backend, "accumulator"):
            gemm = backend.prepare(a, b, spec, alpha=alpha, accumulate=self.cfg.accumulate)
        else:
            gemm = backend.prepare(a, b, spec, alpha=alpha)
        duration = float(self.cfg.duration_s or 1.0)
        with gemm:
            # warm-up outside the measured window: clocks ramp, library heuristics settle
            if self.cfg.warmup_s:
                ctx.timer.run_for_at_least(gemm, float(self.cfg.warmup_s), warmup=1)
            with ctx.window("gemm") as w:
                loop = ctx.timer.run_for_at_least(gemm, duration, warmup=0)
        out = gemm.result()
        nonfinite_frac, overflow_note = self._check_output(out, a, b, params, alpha)
        rec = w.fields()
        if overflow_note:
            rec.warn(overflow_note)
        flops = gemm.flops
        iters = loop.iterations
        rec.update({
            "device_name": self._device_name,
            "m": m, "n": n, "k": k,
            "work_per_gemm_flop": flops,
            "alpha": alpha,
            "b_layout": info["b_layout"],
            "generator": info["generator"],
            "accumulate": self.cfg.accumulate,
            "fill_order": info["fill_order"],
            "nonfinite_input_frac": info["nonfinite_input_frac"],
            "kernel_layout": gemm.layout,
            "nonfinite_fixed_frac": info["nonfinite_fixed_frac"],
            "output_nonfinite_frac": nonfinite_frac,
            "iteration_count": iters,
            "loop_s": loop.elapsed_s,
            "time_per_gemm_ms": loop.per_iter_s * 1e3,
        })
        rec.derive("throughput_tflop_s", lambda t: flops * iters / t / 1e12 if t > 0 else None, "loop_s", reason="timed loop of zero length")
        rec.update(feats)
        for stem, energy in (("energy", "energy_j"), ("energy_net", "energy_net_j")):
            # null with the energy's reason, provenance inherited from it
            rec.derive(f"{stem}_per_gemm_j", lambda e: e / iters, energy, formula="per GEMM")
            rec.derive(f"{stem}_per_flop_pj", lambda e: e / iters / flops * 1e12, energy, formula="per FLOP")
        if acc_name is None:
            rec.null("accumulator", acc_why)
        else:
            rec.set("accumulator", acc_name)
        check_res = self.checks.get((dt, be_name))
        if check_res is None:
            rec.null("correctness_rel_error_frac", "correctness check disabled (check_correctness = false)")
        else:
            rec.set("correctness_rel_error_frac", check_res.rel_error)
        if self.calibration is not None:
            from charbench.workloads.gemm_power.analysis import predict_power

            watts, note = predict_power(self.calibration, dt, be_name, feats)
            rec.set("power_estimated_w", watts, note, reason=note)
        return rec

    def _check_output(self, out: Any, a: Any, b: Any, params: dict[str, Any], alpha: float) -> tuple[float, str | None]:
        """Fraction of non-finite outputs, and a warning when the inputs explain them.

        A non-finite output fails the point (PointFailedError) unless the inputs themselves
        make overflow possible: ``alpha * max_i ||A_i|| * max_j ||B_j||`` (float64) beyond the
        output's largest finite value. That happens by construction when bit experiments
        randomize exponent bits (as in the paper, whose outputs were Inf there too); such a
        point keeps its measurement and says so.
        """
        import torch

        if not out.is_floating_point():
            return 0.0, None
        bad = int(out.numel() - torch.isfinite(out).sum().item())
        if not bad:
            return 0.0, None
        nan = int(torch.isnan(out).sum().item())
        a64, b64 = a.to(torch.float64), b.to(torch.float64)
        bound = abs(alpha) * float(a64.norm(dim=1).max().item()) * float(b64.norm(dim=0).max().item())
        limit = float(torch.finfo(out.dtype).max)
        what = (f"output has {bad} non-finite element(s) of {out.numel()} ({nan} NaN, {bad - nan} Inf) "
                f"for {params['experiment']}={params['value']:g} in {params['dtype']} (alpha {alpha:g})")
        if not bound > limit:
            raise PointFailedError(f"{what}; the inputs cannot overflow (|C| <= {bound:.3g} < {limit:.3g}), so the kernel is at fault")
        return bad / out.numel(), (f"{what}: the inputs overflow the accumulator by construction (|C| bound {bound:.3g} > {limit:.3g}); "
                                   "power and time are measured, the GEMM's values are not meaningful")

    def finalize(self, store: Any, ctx: Context) -> dict[str, Any]:
        """Fit the power models, save the calibration, summarize swings."""
        return finalize_run(store)


def accumulation(backend: Any, spec: DTypeSpec, accumulate: str, device: str) -> tuple[str | None, str]:
    """(the accumulator type the GEMM uses, or None, and why not) for ``--accumulate``.

    charbench's CUDA-core kernel honours both settings (fp16 HFMA accumulation, int8 dp4a);
    torch/cuBLAS and the other backends accumulate 16-bit floats in fp32 and int8 in int32,
    so ``--accumulate out`` for a 16-bit float on them is recorded as not honoured.
    """
    if hasattr(backend, "accumulator"):
        return backend.accumulator(spec, accumulate), ""
    default = {"int8": "int32"}.get(spec.family, "fp32")
    if spec.name == "fp32" or spec.family == "int8" or accumulate == "fp32":
        return default, ""
    return None, (f"--accumulate out: {backend.name} accumulates {spec.name} in fp32 on {device} (no output-type accumulation to select); "
                  "--backends cuda-simt --dtypes fp16-simt accumulates in fp16 as the paper's CUTLASS kernel did")


def finalize_run(store: Any) -> dict[str, Any]:
    """Fits, calibration, switching models and the headline of a run folder (measured or imported)."""
    from charbench.workloads.gemm_power.analysis import fit_power_models, fit_switching_models, headline, largest_swings, power_column, save_calibration

    df = store.results_frame()
    summary: dict[str, Any] = {"points": int(len(df))}
    models, notes = fit_power_models(df)
    summary["model_notes"] = notes
    if models:
        path = save_calibration(models, store.path / "power_calibration.json", source=store.meta.get("run_id", ""))
        summary["calibration"] = str(path)
        summary["models"] = [
            {"dtype": m.dtype, "backend": m.backend, "r2": m.r2, "loo_mae_w": m.loo_mae_w, **m.coefficients()} for m in models
        ]
    metric = power_column(df) if len(df) else None
    if metric is None and len(df) and "power_estimated_w" in df.columns and df["power_estimated_w"].notna().any():
        metric = "power_estimated_w"
    if metric is None:
        metric = "time_per_gemm_ms"
    sw = largest_swings(df, metric) if len(df) else None
    if len(df):
        sms, sm_notes = fit_switching_models(df)
        summary["switching_models"] = [{"dtype": m.dtype, "backend": m.backend, "features": m.features, "coef": m.coef, "r2": m.r2,
                                        "loeo_mae_w": m.loeo_mae_w, "n_points": m.n_points, "baseline_r2": m.baseline_r2,
                                        "power_cap_w": m.power_cap_w, "n_throttled": m.n_throttled} for m in sms]
        summary["model_notes"] = list(summary.get("model_notes", [])) + sm_notes
        hd = headline(df, metric)
        summary["headline_metric"] = metric
        summary["headline"] = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
                               for r in hd.to_dict("records")]
    if sw is not None and len(sw):
        summary["largest_swing_metric"] = metric
        summary["largest_swings"] = [
            {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
            for row in sw.to_dict("records")
        ]
    return summary
