"""Power model from switching activity: fit, leave-one-experiment-out error, calibration files.

Per (device, dtype, backend) the measured power is fitted by least squares as::

    power_w = a + b * toggle_k_frac + c * hamming_frac + d * zero_operand_frac

(toggle rate along K, Hamming weight and zero-operand fraction, all per format bit or per
element, in [0, 1]). The fit reports R^2, the coefficients and the mean absolute error when
each experiment in turn is left out of the fit and predicted. A calibration file holds the
models, so a machine without a GPU can estimate power for new inputs
(``charbench gemm-power --predict CALIBRATION``; every such value is labeled estimated)::

    models = fit_power_models(records_frame)
    save_calibration(models, run_dir / "power_calibration.json", source="run-id")
    cal = load_calibration(path)
    watts, note = predict_power(cal, "fp16", "torch", features)
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from charbench.errors import ConfigError
from charbench.kernels.switching import MODEL_FEATURES

CALIBRATION_FORMAT = "charbench.gemm_power.calibration/1"
COEF_NAMES = ("intercept_w", "toggle_w", "hamming_w", "zero_w")
#: power columns tried in order: counter-based average first, sampler mean as a fallback
POWER_COLUMNS = ("mean_power_w", "mean_gpu0_power_w", "mean_cpu_package_power_w")
MIN_POINTS = 5


@dataclass
class PowerModel:
    """A fitted power model for one (device, dtype, backend)."""

    device_name: str
    dtype: str
    backend: str
    coef: list[float]
    features: list[str] = field(default_factory=lambda: list(MODEL_FEATURES))
    power_metric: str = "mean_power_w"
    r2: float | None = None
    loo_mae_w: float | None = None
    loo_mape: float | None = None
    loo_by_experiment: dict[str, float] = field(default_factory=dict)
    n_points: int = 0
    experiments: list[str] = field(default_factory=list)
    rank: int = 0
    size: list[int] | None = None
    power_range_w: list[float] = field(default_factory=list)
    feature_ranges: dict[str, list[float]] = field(default_factory=dict)

    def predict(self, feats: dict[str, float]) -> float:
        """Power (W) for one input pair's features."""
        return self.coef[0] + sum(c * float(feats[f]) for c, f in zip(self.coef[1:], self.features))

    def coefficients(self) -> dict[str, float]:
        """Coefficients by name (``intercept_w``, ``toggle_w``, ``hamming_w``, ``zero_w``)."""
        return dict(zip(COEF_NAMES, self.coef))


def fit_linear(x: Any, y: Any) -> tuple[list[float], float | None, int]:
    """Least squares ``y ~ 1 + x``; returns (coefficients with intercept first, R^2, rank).

    Args:
        x: (n, f) features.
        y: (n,) targets.
    """
    import numpy as np

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    design = np.column_stack([np.ones(len(y)), x])
    coef, _res, rank, _sv = np.linalg.lstsq(design, y, rcond=None)
    pred = design @ coef
    ss_tot = float(((y - y.mean()) ** 2).sum())
    ss_res = float(((y - pred) ** 2).sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else None
    return [float(c) for c in coef], r2, int(rank)


def loo_experiment_error(x: Any, y: Any, groups: list[str]) -> tuple[float | None, float | None, dict[str, float]]:
    """Mean absolute (W) and relative error when each experiment is predicted by a fit of the others.

    Returns:
        (MAE over all held-out points, MAPE, per-experiment MAE); Nones when fewer than two
        experiments exist.
    """
    import numpy as np

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    g = np.asarray(groups)
    names = sorted(set(groups))
    if len(names) < 2:
        return None, None, {}
    errs: list[float] = []
    rel: list[float] = []
    per: dict[str, float] = {}
    for name in names:
        test = g == name
        train = ~test
        if train.sum() < 2:
            continue
        coef, _, _ = fit_linear(x[train], y[train])
        pred = coef[0] + x[test] @ np.asarray(coef[1:])
        e = np.abs(pred - y[test])
        per[name] = float(e.mean())
        errs.extend(e.tolist())
        rel.extend((e / np.where(y[test] != 0, np.abs(y[test]), np.nan)).tolist())
    if not errs:
        return None, None, {}
    rel_ok = [r for r in rel if r == r]
    return float(np.mean(errs)), (float(np.mean(rel_ok)) if rel_ok else None), per


def power_column(df: Any) -> str | None:
    """The first power column with data (counter average, else sampler mean), or None."""
    for col in POWER_COLUMNS:
        if col in df.columns and df[col].notna().any():
            return col
    return None


def fit_power_models(df: Any) -> tuple[list[PowerModel], list[str]]:
    """Fit one model per (device_name, dtype, backend) group that has measured power.

    Returns:
        (models, notes) where notes say why a group got no model.
    """
    notes: list[str] = []
    if df is None or len(df) == 0:
        return [], ["no points"]
    col = power_column(df)
    if col is None:
        return [], ["no power data to fit: power was not measured on this machine"]
    need = [*MODEL_FEATURES, "dtype", "backend", "experiment"]
    missing = [c for c in need if c not in df.columns]
    if missing:
        return [], [f"no switching features in the results ({', '.join(missing)} missing)"]
    data = df[df[col].notna()].copy()
    if "device_name" not in data.columns:
        data["device_name"] = "unknown"
    models = []
    for (dev, dt, be), grp in data.groupby(["device_name", "dtype", "backend"], sort=True):
        if len(grp) < MIN_POINTS:
            notes.append(f"{dt}/{be}: only {len(grp)} point(s) with power; a fit needs {MIN_POINTS}")
            continue
        x = grp[list(MODEL_FEATURES)].to_numpy(dtype=float)
        y = grp[col].to_numpy(dtype=float)
        coef, r2, rank = fit_linear(x, y)
        mae, mape, per = loo_experiment_error(x, y, [str(v) for v in grp["experiment"]])
        size = None
        if {"m", "n", "k"} <= set(grp.columns):
            first = grp.iloc[0]
            size = [int(first["m"]), int(first["n"]), int(first["k"])]
        if rank < len(MODEL_FEATURES) + 1:
            notes.append(f"{dt}/{be}: features are collinear in these points (rank {rank}); coefficients are one of many exact fits")
        models.append(PowerModel(
            device_name=str(dev), dtype=str(dt), backend=str(be), coef=coef, power_metric=col, r2=r2,
            loo_mae_w=mae, loo_mape=mape, loo_by_experiment=per, n_points=int(len(grp)),
            experiments=sorted({str(e) for e in grp["experiment"]}), rank=rank, size=size,
            power_range_w=[float(y.min()), float(y.max())],
            feature_ranges={f: [float(grp[f].min()), float(grp[f].max())] for f in MODEL_FEATURES},
        ))
    return models, notes


def save_calibration(models: list[PowerModel], path: Path, source: str = "") -> Path:
    """Write models to a calibration JSON file (atomic)."""
    from charbench.results import atomic_write_json

    atomic_write_json(Path(path), {
        "format": CALIBRATION_FORMAT,
        "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "source_run": source,
        "features": list(MODEL_FEATURES),
        "model": "power_w = intercept_w + toggle_w*toggle_k_frac + hamming_w*hamming_frac + zero_w*zero_operand_frac",
        "models": [asdict(m) for m in models],
    })
    return Path(path)


@dataclass
class Calibration:
    """A loaded calibration file."""

    path: str
    source_run: str
    models: list[PowerModel]

    def find(self, dtype: str, backend: str) -> tuple[PowerModel | None, str]:
        """The model for (dtype, backend), else one for the dtype on another backend.

        Returns:
            (model or None, note saying which model was used or why none).
        """
        exact = [m for m in self.models if m.dtype == dtype and m.backend == backend]
        if exact:
            m = exact[0]
            return m, f"estimated: calibration {Path(self.path).name} ({m.device_name}, {m.dtype}, {m.backend}, R^2 {_fmt(m.r2)})"
        same = [m for m in self.models if m.dtype == dtype]
        if same:
            m = same[0]
            return m, f"estimated: calibration {Path(self.path).name} ({m.device_name}, {m.dtype}, backend {m.backend} standing in for {backend})"
        have = ", ".join(sorted({f"{m.dtype}/{m.backend}" for m in self.models})) or "none"
        return None, f"calibration {Path(self.path).name} has no model for dtype {dtype} (it has: {have})"


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def load_calibration(path: Path | str) -> Calibration:
    """Read a calibration file.

    Raises:
        ConfigError: missing, unreadable, or not a gemm-power calibration.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--predict: calibration file not found: {p}; make one with a GPU run (power_calibration.json in its run folder)")
    try:
        data = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"--predict {p}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != CALIBRATION_FORMAT:
        raise ConfigError(f"--predict {p}: not a gemm-power calibration (expected format {CALIBRATION_FORMAT!r})")
    models = []
    for m in data.get("models", []):
        try:
            models.append(PowerModel(**m))
        except TypeError as exc:
            raise ConfigError(f"--predict {p}: a model entry is malformed ({exc})") from exc
    if not models:
        raise ConfigError(f"--predict {p}: the calibration holds no models")
    return Calibration(str(p), str(data.get("source_run", "")), models)


def predict_power(cal: Calibration, dtype: str, backend: str, feats: dict[str, float]) -> tuple[float | None, str]:
    """Estimated power (W) for one input pair, with the provenance note (or why none)."""
    model, note = cal.find(dtype, backend)
    if model is None:
        return None, note
    value = model.predict(feats)
    return (value if math.isfinite(value) else None), note


def largest_swings(df: Any, metric: str) -> Any:
    """Per (dtype, backend): the largest and smallest mean ``metric`` over points, and the swing.

    Points are averaged over seeds and repeats first. Returns a DataFrame with ``dtype``,
    ``backend``, ``max``, ``min``, ``swing``, ``swing_pct`` (of the max), ``at_max``, ``at_min``.
    """
    import pandas as pd

    cols = ["dtype", "backend", "max", "min", "swing", "swing_pct", "at_max", "at_min"]
    if df is None or len(df) == 0 or metric not in df.columns or not df[metric].notna().any():
        return pd.DataFrame(columns=cols)
    d = df[df[metric].notna()]
    mean = d.groupby(["dtype", "backend", "experiment", "value"], sort=True)[metric].mean().reset_index()
    rows = []
    for (dt, be), grp in mean.groupby(["dtype", "backend"], sort=True):
        hi = grp.loc[grp[metric].idxmax()]
        lo = grp.loc[grp[metric].idxmin()]
        swing = float(hi[metric] - lo[metric])
        rows.append({
            "dtype": dt, "backend": be, "max": float(hi[metric]), "min": float(lo[metric]), "swing": swing,
            "swing_pct": 100.0 * swing / float(hi[metric]) if hi[metric] else None,
            "at_max": f"{hi['experiment']}={hi['value']:g}", "at_min": f"{lo['experiment']}={lo['value']:g}",
        })
    return pd.DataFrame(rows, columns=cols)


def paper_a100() -> dict[str, Any]:
    """The paper's A100 numbers shipped with charbench (``data/paper_a100.json``)."""
    text = resources.files("charbench.workloads.gemm_power").joinpath("data", "paper_a100.json").read_text()
    return json.loads(text)


# --- one honest headline ------------------------------------------------------------------

#: experiments that are not GEMMs (memory contents, the bit-flip kernel, idle): not in the headline
NON_GEMM = ("memory-ones", "memory-zeros", "bit-flips", "idle")


def headline(df: Any, metric: str) -> Any:
    """Per (dtype, backend): the paper's swing and (max - min) / max, with the run's own noise.

    * ``swing_paper_pct`` = (baseline - lowest) / baseline (the paper's definition; needs the
      ``baseline`` experiment, else None with ``why``);
    * ``swing_maxmin_pct`` = (max - min) / max over all GEMM points;
    * ``noise`` = the larger min-max spread over seeds and repeats of the baseline and the
      lowest point (None with one sample per point); ``beyond_noise`` says whether
      baseline - lowest exceeds it (None when the noise is unknown).

    Points are averaged over seeds and repeats first; non-GEMM experiments are left out.
    """
    import pandas as pd

    cols = ["dtype", "backend", "baseline", "lowest", "at_lowest", "highest", "at_highest", "swing_paper_pct",
            "swing_maxmin_pct", "noise", "beyond_noise", "why"]
    if df is None or len(df) == 0 or metric not in df.columns:
        return pd.DataFrame(columns=cols)
    d = df[df[metric].notna() & ~df["experiment"].isin(NON_GEMM)]
    rows = []
    for (dt, be), grp in d.groupby(["dtype", "backend"], sort=True):
        by = grp.groupby(["experiment", "value"], sort=True)[metric]
        mean, spread, count = by.mean(), by.max() - by.min(), by.count()
        lo_k, hi_k = mean.idxmin(), mean.idxmax()
        row: dict[str, Any] = {"dtype": dt, "backend": be, "lowest": float(mean[lo_k]), "at_lowest": f"{lo_k[0]}={lo_k[1]:g}",
                               "highest": float(mean[hi_k]), "at_highest": f"{hi_k[0]}={hi_k[1]:g}",
                               "swing_maxmin_pct": 100.0 * float(mean[hi_k] - mean[lo_k]) / float(mean[hi_k]) if mean[hi_k] else None,
                               "baseline": None, "swing_paper_pct": None, "noise": None, "beyond_noise": None, "why": ""}
        base_keys = [k for k in mean.index if k[0] == "baseline"]
        if not base_keys:
            row["why"] = "no baseline experiment in this run (add --experiments baseline)"
        else:
            bk = base_keys[0]
            base = float(mean[bk])
            row["baseline"] = base
            row["swing_paper_pct"] = 100.0 * (base - row["lowest"]) / base if base else None
            if min(int(count[bk]), int(count[lo_k])) < 2:
                row["why"] = "one sample per point: the run's noise is unknown (use --seeds or --repeats)"
            else:
                noise = float(max(spread[bk], spread[lo_k]))
                row["noise"] = noise
                row["beyond_noise"] = bool(base - row["lowest"] > noise)
                if not row["beyond_noise"]:
                    row["why"] = f"baseline - lowest ({base - row['lowest']:.3g}) is within the run's noise ({noise:.3g})"
        rows.append(row)
    return pd.DataFrame(rows, columns=cols)


def paper_headline(dtype: str) -> dict[str, Any] | None:
    """The paper's A100 numbers for a charbench dtype (same two definitions), or None."""
    return paper_a100()["dtypes"].get(dtype)


# --- the switching model: per-operand, bit-field features chosen by held-out error ----------

#: a point whose mean SM clock is below this share of the group's highest was throttled
THROTTLE_CLOCK_SHARE = 0.99


@dataclass
class SwitchingModel:
    """A linear power model over features chosen by leave-one-experiment-out error.

    When some points ran at a throttled SM clock (the board's power limit), their power is
    the limit, not what the inputs would draw: the fit treats them as censored (the model
    may predict more) and predicts ``min(power_cap_w, linear)``.
    """

    dtype: str
    backend: str
    features: list[str]
    coef: list[float]
    r2: float | None
    loeo_mae_w: float | None
    n_points: int
    baseline_r2: dict[str, float | None] = field(default_factory=dict)
    path: list[dict[str, Any]] = field(default_factory=list)
    power_cap_w: float | None = None
    n_throttled: int = 0
    nested_loeo_mae_w: float | None = None

    def predict(self, feats: dict[str, float]) -> float:
        """Power (W) for one input pair's features."""
        p = self.coef[0] + sum(c * float(feats[f]) for c, f in zip(self.coef[1:], self.features))
        return min(p, self.power_cap_w) if self.power_cap_w is not None else p


def fit_capped(x: Any, y: Any, capped: Any, iters: int = 100) -> tuple[list[float], float | None]:
    """Least squares with the ``capped`` points right-censored at the power limit.

    A capped point's measured power is a lower bound of what the linear model should give
    (the clock was lowered to hold the limit): it adds error only where the prediction is
    below the measurement. Solved by iterating least squares on ``max(y, prediction)`` for
    capped points (each step cannot raise the censored squared error). The cap is the mean
    power of the capped points.

    Returns:
        (coefficients with the intercept first, cap in W or None when no point is capped).
    """
    import numpy as np

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    capped = np.asarray(capped, dtype=bool)
    coef, _, _ = fit_linear(x, y)
    if not capped.any():
        return coef, None
    design = np.column_stack([np.ones(len(y)), x])
    for _ in range(iters):
        pred = design @ np.asarray(coef)
        new, _, _ = fit_linear(x, np.where(capped, np.maximum(y, pred), y))
        done = np.allclose(new, coef, rtol=0, atol=1e-9)
        coef = new
        if done:
            break
    return coef, float(y[capped].mean())


def _predict(coef: list[float], cap: float | None, x: Any) -> Any:
    import numpy as np

    p = coef[0] + np.asarray(x, dtype=np.float64) @ np.asarray(coef[1:])
    return np.minimum(p, cap) if cap is not None else p


def _r2(y: Any, pred: Any) -> float | None:
    import numpy as np

    ss_tot = float(((y - np.mean(y)) ** 2).sum())
    return 1.0 - float(((y - pred) ** 2).sum()) / ss_tot if ss_tot > 0 else None


def _fit_arrays(x: Any, y: Any, capped: Any) -> tuple[Any, Any, Any]:
    """``x``, ``y`` as float64 arrays and ``capped`` as a bool mask (all False when None)."""
    import numpy as np

    y = np.asarray(y, dtype=np.float64)
    mask = np.zeros(len(y), dtype=bool) if capped is None else np.asarray(capped, dtype=bool)
    return np.asarray(x, dtype=np.float64), y, mask


def loeo_mae(x: Any, y: Any, groups: list[str], capped: Any = None) -> float | None:
    """Mean absolute error (W) over all points, each experiment predicted by a fit of the others.

    ``capped`` marks throttled points (:func:`fit_capped`); the held-out experiment's
    throttling is not used to predict it (the prediction is ``min(training cap, linear)``).
    """
    import numpy as np

    x, y, capped = _fit_arrays(x, y, capped)
    g = np.asarray(groups)
    errs: list[Any] = []
    for name in sorted(set(groups)):
        test = g == name
        if (~test).sum() < 2:
            continue
        coef, cap = fit_capped(x[~test], y[~test], capped[~test])
        errs.append(np.abs(_predict(coef, cap, x[test]) - y[test]))
    return float(np.concatenate(errs).mean()) if errs else None


def select_switching_model(x: Any, y: Any, groups: list[str], names: list[str], max_features: int = 6,
                           capped: Any = None) -> tuple[list[int], list[dict[str, Any]]]:
    """Forward selection: add the feature that lowers the leave-one-experiment-out MAE most.

    Stops when no feature lowers the held-out MAE by at least 0.1 W, or at ``max_features``.

    Returns:
        (chosen column indices, the path: one dict per step with ``feature``, ``loeo_mae_w``, ``r2``).
    """
    import numpy as np

    x, y, capped = _fit_arrays(x, y, capped)
    chosen: list[int] = []
    path: list[dict[str, Any]] = []
    best_mae = math.inf
    while len(chosen) < max_features:
        trial = None
        for j in range(x.shape[1]):
            if j in chosen or np.ptp(x[:, j]) == 0:
                continue
            mae = loeo_mae(x[:, chosen + [j]], y, groups, capped)
            if mae is not None and (trial is None or mae < trial[0]):
                trial = (mae, j)
        if trial is None or trial[0] > best_mae - 0.1:
            break
        best_mae = trial[0]
        chosen.append(trial[1])
        coef, cap = fit_capped(x[:, chosen], y, capped)
        path.append({"feature": names[trial[1]], "loeo_mae_w": trial[0], "r2": _r2(y, _predict(coef, cap, x[:, chosen]))})
    return chosen, path


def nested_loeo_mae(x: Any, y: Any, groups: list[str], names: list[str], max_features: int = 6, capped: Any = None) -> float | None:
    """LOEO MAE with the feature selection redone inside every fold (no held-out data in the choice).

    The MAE of the selected model (``SwitchingModel.loeo_mae_w``) is optimistic: the
    features were chosen to minimize it. Here each experiment is predicted by a model whose
    features were selected on the other experiments alone.
    """
    import numpy as np

    x, y, capped = _fit_arrays(x, y, capped)
    g = np.asarray(groups)
    errs: list[Any] = []
    for name in sorted(set(groups)):
        test = g == name
        tr = ~test
        if len(set(g[tr].tolist())) < 2:
            continue
        idx, _ = select_switching_model(x[tr], y[tr], g[tr].tolist(), names, max_features, capped[tr])
        if idx:
            coef, cap = fit_capped(x[tr][:, idx], y[tr], capped[tr])
            pred = _predict(coef, cap, x[test][:, idx])
        else:
            pred = np.full(int(test.sum()), float(y[tr].mean()))
        errs.append(np.abs(pred - y[test]))
    return float(np.concatenate(errs).mean()) if errs else None


#: bits of each storage format a multiplier's partial products take (floats: the mantissa;
#: int8: the magnitude bits 0-6 of the two's complement word)
_PRODUCT_FIELDS = {"float32": ("man",), "float16": ("man",), "bfloat16": ("man",), "float8_e4m3fn": ("man",),
                   "float8_e5m2": ("man",), "int8": ("hi", "lo")}


def add_product_toggle_features(df: Any, storage: str) -> Any:
    """Add the expected toggle rate of the partial products ``a_i * b_j`` between neighbours.

    For bits a (of A) and b (of B) with set rates h_a, h_b and toggle rates t_a, t_b, and
    independent operands, the product bit toggles with probability
    ``h_a t_b + h_b t_a - t_a t_b / 2`` (a stationary bit goes 0->1 and 1->0 at t/2 each).
    Averaged over all pairs of the multiplier's input bits it needs only the field means:
    ``pp_{k,mn}_man_frac`` over the mantissa (int8: bits 0-6), ``pp_{k,mn}_all_frac`` over
    every bit of the word; ``k`` uses the toggles along K, ``mn`` along M (A) / N (B).
    Returns a copy of ``df`` with the columns added (where the field columns exist).
    """
    from charbench.kernels.switching import FIELDS

    fields = FIELDS.get(storage)
    out = df.copy()
    if not fields:
        return out
    groups = {"man": _PRODUCT_FIELDS[storage], "all": tuple(fields)}
    new = {}
    for dirn in ("k", "mn"):
        for gname, names in groups.items():
            cols = [f"hw_{x}_{f}_frac" for f in names for x in "ab"] + [f"tog_{x}_{dirn}_{f}_frac" for f in names for x in "ab"]
            if not all(c in df.columns for c in cols):
                continue
            width = sum(fields[f][1] for f in names)

            def mean(kind: str, x: str) -> Any:
                col = (lambda f: f"hw_{x}_{f}_frac") if kind == "hw" else (lambda f: f"tog_{x}_{dirn}_{f}_frac")
                return sum(df[col(f)] * fields[f][1] for f in names) / width

            ha, hb, ta, tb = mean("hw", "a"), mean("hw", "b"), mean("tog", "a"), mean("tog", "b")
            new[f"pp_{dirn}_{gname}_frac"] = ha * tb + hb * ta - ta * tb / 2
    for k, v in new.items():
        out[k] = v
    return out


def _storage_of(dtype: str) -> str | None:
    from charbench.kernels.gemm import get_dtype

    try:
        return get_dtype(dtype).storage
    except ConfigError:  # an imported dtype name charbench does not know: no derived features
        return None


def fit_switching_models(df: Any, max_features: int = 6, nested: bool = False) -> tuple[list[SwitchingModel], list[str]]:
    """One selected model per (dtype, backend) with power, over seed-averaged GEMM points.

    Candidate features: every ``hw_*``, ``tog_*`` and ``zero_*`` column (per operand, per
    bit field; :func:`charbench.kernels.switching.field_switching_stats`) and the partial
    products' toggle rates (:func:`add_product_toggle_features`). Points whose mean SM clock
    is below ``THROTTLE_CLOCK_SHARE`` of the group's highest ran at the power limit and are
    censored (:func:`fit_capped`). The report shows the chosen features, coefficients, R^2
    and LOEO MAE (and, with ``nested``, the LOEO MAE with selection inside each fold), beside
    the R^2 of Hamming weight alone (the paper's hypothesis) and of the three-feature model.
    """
    import re

    import numpy as np

    notes: list[str] = []
    col = power_column(df) if df is not None and len(df) else None
    if col is None:
        return [], ["no power data to fit"]
    per_operand = re.compile(r"^(hw_[ab]_\w+|tog_[ab]_(k|mn)_\w+|zero_[ab]|zero_product|pp_(k|mn)_\w+)_frac$")
    d = df[df[col].notna() & ~df["experiment"].isin(NON_GEMM)]
    models = []
    for (dt, be), grp in d.groupby(["dtype", "backend"], sort=True):
        st = _storage_of(str(dt))
        if st is not None:
            grp = add_product_toggle_features(grp, st)
        feats = sorted(c for c in grp.columns if per_operand.match(c) and grp[c].notna().all())
        if not feats:
            notes.append(f"{dt}/{be}: no per-operand switching features in the results")
            continue
        # the SM clock: imported traces' mean, else a measured run's sampler column (first GPU)
        clock = next((c for c in ("mean_sm_clock_mhz", *sorted(c for c in grp.columns if re.match(r"^mean_gpu\d+_sm_clock_mhz$", c)))
                      if c in grp.columns and grp[c].notna().all()), None)
        extra = [f for f in (*MODEL_FEATURES, "hamming_frac", clock) if f and f in grp.columns and f not in feats]
        g = grp.groupby(["experiment", "value"], sort=True)[list(dict.fromkeys([col, *feats, *extra]))].mean().reset_index()
        if len(g) < MIN_POINTS:
            notes.append(f"{dt}/{be}: {len(g)} point(s); a fit needs {MIN_POINTS}")
            continue
        y = g[col].to_numpy(dtype=float)
        x = g[feats].to_numpy(dtype=float)
        capped = np.zeros(len(y), dtype=bool)
        if clock is not None:
            clk = g[clock].to_numpy(dtype=float)
            capped = clk < THROTTLE_CLOCK_SHARE * clk.max()
        groups = [str(e) for e in g["experiment"]]
        idx, path = select_switching_model(x, y, groups, feats, max_features, capped)
        if idx:
            coef, cap = fit_capped(x[:, idx], y, capped)
            r2 = _r2(y, _predict(coef, cap, x[:, idx]))
        else:
            coef, cap, r2 = [float(np.mean(y))], None, 0.0
        mae = path[-1]["loeo_mae_w"] if path else None
        base: dict[str, float | None] = {}
        if "hamming_frac" in g.columns:
            base["hamming_frac"] = fit_linear(g[["hamming_frac"]].to_numpy(dtype=float), y)[1]
        if all(f in g.columns for f in MODEL_FEATURES):
            base["three_feature"] = fit_linear(g[list(MODEL_FEATURES)].to_numpy(dtype=float), y)[1]
        nmae = nested_loeo_mae(x, y, groups, feats, max_features, capped) if nested else None
        models.append(SwitchingModel(str(dt), str(be), [feats[i] for i in idx], coef, r2, mae, int(len(g)), base, path,
                                     power_cap_w=cap, n_throttled=int(capped.sum()), nested_loeo_mae_w=nmae))
    return models, notes
