"""serve-sweep's side of the cluster-sim profile: records -> entries, and the per-class pick.

The format itself (schema, writer, reader) is :mod:`charbench.profiles`::

    export_profile(store.records(), Path("h100-profile.json"), run_id="...")
    best_under_slo(records, attainment=0.9)     # per workload class, the cheapest config meeting the SLOs
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from charbench.profiles import PERF_FIELDS, write_profile
from charbench.workloads.serving.config import MAX_RATE

def _num(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _prov(rec: dict[str, Any], field: str, value: Any) -> str:
    prov = json.loads(rec.get("provenance") or "{}") if isinstance(rec.get("provenance"), str) else dict(rec.get("provenance") or {})
    reasons = json.loads(rec.get("null_reasons") or "{}") if isinstance(rec.get("null_reasons"), str) else dict(rec.get("null_reasons") or {})
    if value is None:
        return "not-measured:" + str(reasons.get(field, "no value"))
    meter = prov.get(field) or prov.get("energy_j") or prov.get("steady_energy_j") or "meter"
    return ("estimated:" if "estimated" in meter else "measured:") + meter


def profile_entry(rec: dict[str, Any]) -> dict[str, Any]:
    """One profile entry from a serve-sweep record."""
    kind = rec.get("load_kind") or "rate"
    rate = rec.get("request_rate_rps")
    if kind != "rate" or rate is None:
        rate = None
    elif math.isinf(float(rate)):
        rate = MAX_RATE  # the knob's own spelling; JSON has no inf (load_profile reads it back as the float)
    else:
        rate = _num(rate)
    steady = rec.get("steady_energy_per_output_token_j") is not None
    basis = "steady" if steady else "point"
    e_tok = rec.get("steady_energy_per_output_token_j") if steady else rec.get("energy_per_output_token_j")
    p_avg = rec.get("mean_steady_power_w") if steady else rec.get("mean_power_w")
    out: dict[str, Any] = {
        "model": rec.get("model") or rec.get("served_model"),
        "tp": rec.get("tp"),
        "dtype": rec.get("dtype"),
        "max_num_seqs": rec.get("max_num_seqs"),
        "sm_freq_mhz": rec.get("sm_freq_mhz"),
        "power_limit_w": rec.get("power_limit_w"),
        "workload_class": rec.get("workload_class"),
        "input_len": rec.get("input_len"),
        "output_len": rec.get("output_len"),
        "load_kind": kind,
        "request_rate_rps": rate,
        "concurrency": rec.get("concurrency"),
    }
    for f in PERF_FIELDS:
        out[f] = _num(rec.get(f))
    out["mean_power_w"] = _num(p_avg)
    out["energy_per_output_token_j"] = _num(e_tok)
    out["energy_per_request_j"] = _num(rec.get("energy_per_request_j"))
    out["energy_basis"] = basis
    src_p = "mean_steady_power_w" if steady else "mean_power_w"
    src_e = "steady_energy_per_output_token_j" if steady else "energy_per_output_token_j"
    out["provenance"] = {
        "mean_power_w": _prov(rec, src_p, out["mean_power_w"]),
        "energy_per_output_token_j": _prov(rec, src_e, out["energy_per_output_token_j"]),
        "energy_per_request_j": _prov(rec, "energy_per_request_j", out["energy_per_request_j"]),
    }
    return out


def export_profile(records: list[dict[str, Any]], path: Path, run_id: str | None = None) -> Path:
    """Write the profile of serve-sweep ``records`` to ``path`` (``.csv`` -> CSV, else JSON).

    Raises:
        ConfigError: no record to export.
    """
    return write_profile([profile_entry(r) for r in records], path, source_run=run_id)


def energy_per_token(rec: dict[str, Any]) -> tuple[float | None, str]:
    """The record's J/output token and its basis: ``steady`` (preferred), ``point`` or ``not measured``."""
    for key, basis in (("steady_energy_per_output_token_j", "steady"), ("energy_per_output_token_j", "point")):
        v = rec.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            return float(v), basis
    return None, "not measured"


def best_under_slo(records: list[dict[str, Any]], attainment: float) -> list[dict[str, Any]]:
    """Per workload class, the configuration with the lowest J/output token meeting the SLOs.

    Without energy measurements, the highest request goodput wins instead (the row says
    which criterion chose it). Classes where no configuration meets the SLOs are listed
    with ``config`` None.
    """
    classes: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        classes.setdefault(str(r.get("workload_class")), []).append(r)
    out = []
    knobs = ("model", "tp", "dtype", "max_num_seqs", "sm_freq_mhz", "power_limit_w", "request_rate_rps", "concurrency", "mode_step")
    for cls, recs in sorted(classes.items()):
        ok = [r for r in recs if r.get("slo_attainment_frac") is not None and r["slo_attainment_frac"] >= attainment - 1e-12]
        row: dict[str, Any] = {"workload_class": cls, "candidates": len(recs), "meeting_slo": len(ok)}
        if not ok:
            row.update(config=None, criterion=None, energy_per_output_token_j=None, request_goodput_rps=None, point_key=None)
            out.append(row)
            continue
        with_e = [(energy_per_token(r)[0], r) for r in ok if energy_per_token(r)[0] is not None]
        if with_e:
            _, best = min(with_e, key=lambda x: x[0])
            crit = "lowest J/output token"
        else:
            best = max(ok, key=lambda r: r.get("request_goodput_rps") or 0.0)
            crit = "highest goodput (energy not measured)"
        row.update(
            config={k: best.get(k) for k in knobs if best.get(k) is not None},
            criterion=crit,
            energy_per_output_token_j=energy_per_token(best)[0],
            energy_basis=energy_per_token(best)[1],
            request_goodput_rps=best.get("request_goodput_rps"),
            point_key=best.get("point_key"),
        )
        out.append(row)
    return out
