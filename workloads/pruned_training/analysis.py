"""Dense vs PruneTrain from a run's records: totals per run and the savings.

``summarize(df)`` -> ``{"dense": {...}, "prunetrain": {...}, "train_flop_reduction_pct": ...}``;
a figure that needs both runs is None (with the reason under ``null_reasons``) when one is missing.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

RUN_TOTALS = ("total_train_flop", "total_time_s", "final_test_accuracy_pct", "final_inference_flop", "final_param_count")


def epochs(df: pd.DataFrame, run: str) -> pd.DataFrame:
    """One run's epoch records in order (the last record of an epoch wins after a rerun)."""
    if df is None or len(df) == 0 or "run" not in df:
        return pd.DataFrame()
    sub = df[df["run"] == run].drop_duplicates("epoch", keep="last").sort_values("epoch")
    return sub.reset_index(drop=True)


def wall_s(sub: pd.DataFrame) -> pd.Series:
    """Per-epoch wall time: the training window plus the reconfiguration after it."""
    extra = sub["reconfig_time_s"].fillna(0.0) if "reconfig_time_s" in sub else 0.0
    return sub["time_s"] + extra


def run_totals(sub: pd.DataFrame) -> dict[str, Any]:
    """A run's totals (empty when it has no epoch)."""
    if len(sub) == 0:
        return {}
    last = sub.iloc[-1]
    return {"epoch_count": int(len(sub)), "total_train_flop": int(sub["train_flop"].sum()), "total_time_s": float(wall_s(sub).sum()),
            "final_test_accuracy_pct": float(last["test_accuracy_pct"]), "final_inference_flop": int(last["inference_flop"]),
            "final_param_count": int(last["param_count"])}


def reduction_pct(dense: float, pruned: float) -> float:
    """How much smaller ``pruned`` is than ``dense``, in percent."""
    return 100.0 * (1.0 - pruned / dense)


def summarize(df: pd.DataFrame) -> dict[str, Any]:
    """Totals per run and PruneTrain's savings against dense (only over epochs both runs completed)."""
    dense, pruned = epochs(df, "dense"), epochs(df, "prunetrain")
    out: dict[str, Any] = {"dense": run_totals(dense), "prunetrain": run_totals(pruned)}
    keys = ("train_flop_reduction_pct", "wall_time_reduction_pct", "inference_flop_reduction_pct", "param_reduction_pct", "accuracy_delta_pts")
    if len(dense) == 0 or len(pruned) == 0 or len(dense) != len(pruned):
        out.update({k: None for k in keys})
        out["null_reasons"] = {k: "needs both runs completed to the same epoch" for k in keys}
        return out
    d, p = out["dense"], out["prunetrain"]
    out["train_flop_reduction_pct"] = reduction_pct(d["total_train_flop"], p["total_train_flop"])
    out["wall_time_reduction_pct"] = reduction_pct(d["total_time_s"], p["total_time_s"])
    out["inference_flop_reduction_pct"] = reduction_pct(d["final_inference_flop"], p["final_inference_flop"])
    out["param_reduction_pct"] = reduction_pct(d["final_param_count"], p["final_param_count"])
    out["accuracy_delta_pts"] = p["final_test_accuracy_pct"] - d["final_test_accuracy_pct"]
    return out
