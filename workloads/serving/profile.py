"""The measured serving performance/power profile that ``charbench cluster-sim`` reads.

``charbench serve-sweep --export-profile FILE`` writes one entry per measured load;
``FILE.json`` (default) or ``FILE.csv``::

    export_profile(store.records(), Path("h100-profile.json"), run_id="...")
    prof = load_profile(Path("h100-profile.json"))     # validated; list of entries

Format ``charbench-serving-profile``, version 1.

JSON: an object ``{"format": "charbench-serving-profile", "version": 1, "created": ISO time,
"source_run": run id, "fields": {name: description}, "entries": [ENTRY, ...]}``.
CSV: one row per ENTRY with the same field names, plus ``format`` and ``version``
columns; each ``provenance`` item becomes a column ``<field>_provenance``.

ENTRY fields (units in the names; null = not measured, never 0):

* key: ``model``, ``tp``, ``dtype``, ``max_num_seqs``, ``sm_freq_mhz`` (null = clocks not
  locked), ``power_limit_w`` (null = default limit), ``workload_class``
  (e.g. ``in512-out128``, ``azure-conv``, ``trace``), ``input_len``, ``output_len``
  (central lengths; null for trace/azure classes), ``rate_kind`` (``rate``,
  ``max-throughput``, ``concurrency`` or ``trace``), ``rate_rps`` (offered request rate;
  null unless ``rate_kind`` is ``rate``), ``concurrency``.
* performance: ``request_throughput_rps``, ``output_throughput_tok_s``,
  ``total_token_throughput_tok_s``, ``{median,p90,p99}_{ttft,tpot,itl,e2el}_ms``,
  ``slo_attainment``, ``error_rate``.
* power/energy: ``avg_power_w``, ``energy_per_output_token_j``, ``energy_per_request_j``,
  ``energy_basis`` (``steady`` when the steady-state window existed, else ``point``, the
  whole load).
* ``provenance``: for ``avg_power_w``, ``energy_per_output_token_j`` and
  ``energy_per_request_j``: ``measured:<meter>`` (e.g. ``measured:nvml-energy-counter``),
  ``estimated:<how>`` (written by tools that fill gaps, never by serve-sweep) or
  ``not-measured:<reason>``. Latency and throughput are always measured.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from pathlib import Path
from typing import Any

from charbench.errors import ConfigError
from charbench.results import atomic_write_json, atomic_write_text

FORMAT = "charbench-serving-profile"
VERSION = 1

KEY_FIELDS: tuple[str, ...] = (
    "model", "tp", "dtype", "max_num_seqs", "sm_freq_mhz", "power_limit_w", "workload_class",
    "input_len", "output_len", "rate_kind", "rate_rps", "concurrency",
)
PERF_FIELDS: tuple[str, ...] = (
    "request_throughput_rps", "output_throughput_tok_s", "total_token_throughput_tok_s",
    *(f"{s}_{m}_ms" for m in ("ttft", "tpot", "itl", "e2el") for s in ("median", "p90", "p99")),
    "slo_attainment", "error_rate",
)
ENERGY_FIELDS: tuple[str, ...] = ("avg_power_w", "energy_per_output_token_j", "energy_per_request_j", "energy_basis")

FIELD_DOCS: dict[str, str] = {
    "model": "model name (built-in preset, checkpoint, or served name)",
    "tp": "tensor-parallel degree",
    "dtype": "weights/activations dtype",
    "max_num_seqs": "engine batch limit",
    "sm_freq_mhz": "locked SM clock in MHz (null: not locked)",
    "power_limit_w": "GPU power limit in W (null: default)",
    "workload_class": "request-length class",
    "input_len": "central input length in tokens",
    "output_len": "central output length in tokens",
    "rate_kind": "rate | max-throughput | concurrency | trace",
    "rate_rps": "offered request rate in requests/s",
    "concurrency": "closed-loop users",
    "request_throughput_rps": "completed requests/s",
    "output_throughput_tok_s": "output tokens/s",
    "total_token_throughput_tok_s": "input+output tokens/s",
    "slo_attainment": "fraction of requests meeting every SLO",
    "error_rate": "fraction of failed requests",
    "avg_power_w": "average device power over energy_basis window in W",
    "energy_per_output_token_j": "J per output token over energy_basis window",
    "energy_per_request_j": "J per completed request (whole load)",
    "energy_basis": "steady | point",
}
for _m in ("ttft", "tpot", "itl", "e2el"):
    for _s in ("median", "p90", "p99"):
        FIELD_DOCS[f"{_s}_{_m}_ms"] = f"{_s} {_m.upper()} in ms"


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
    kind = rec.get("load_kind")
    rate = rec.get("request_rate_rps")
    if kind == "burst" or (kind == "rate" and rate is not None and math.isinf(float(rate))):
        rate_kind = "max-throughput"
    else:
        rate_kind = kind or "rate"
    steady = rec.get("steady_energy_per_output_token_j") is not None
    basis = "steady" if steady else "point"
    e_tok = rec.get("steady_energy_per_output_token_j") if steady else rec.get("energy_per_output_token_j")
    p_avg = rec.get("steady_avg_power_w") if steady else rec.get("avg_power_w")
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
        "rate_kind": rate_kind,
        "rate_rps": _num(rate) if rate_kind == "rate" else None,
        "concurrency": rec.get("concurrency"),
    }
    for f in PERF_FIELDS:
        out[f] = _num(rec.get(f))
    out["avg_power_w"] = _num(p_avg)
    out["energy_per_output_token_j"] = _num(e_tok)
    out["energy_per_request_j"] = _num(rec.get("energy_per_request_j"))
    out["energy_basis"] = basis
    src_p = "steady_avg_power_w" if steady else "avg_power_w"
    src_e = "steady_energy_per_output_token_j" if steady else "energy_per_output_token_j"
    out["provenance"] = {
        "avg_power_w": _prov(rec, src_p, out["avg_power_w"]),
        "energy_per_output_token_j": _prov(rec, src_e, out["energy_per_output_token_j"]),
        "energy_per_request_j": _prov(rec, "energy_per_request_j", out["energy_per_request_j"]),
    }
    return out


def export_profile(records: list[dict[str, Any]], path: Path, run_id: str | None = None) -> Path:
    """Write the profile of ``records`` to ``path`` (``.csv`` -> CSV, else JSON).

    Raises:
        ConfigError: no record to export.
    """
    if not records:
        raise ConfigError("--export-profile: the run has no completed point to export")
    entries = [profile_entry(r) for r in records]
    path = Path(path)
    if path.suffix.lower() == ".csv":
        import pandas as pd

        rows = []
        for e in entries:
            row = {"format": FORMAT, "version": VERSION}
            row.update({k: v for k, v in e.items() if k != "provenance"})
            row.update({f"{k}_provenance": v for k, v in e["provenance"].items()})
            rows.append(row)
        atomic_write_text(path, pd.DataFrame(rows).to_csv(index=False))
    else:
        atomic_write_json(path, {
            "format": FORMAT,
            "version": VERSION,
            "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "source_run": run_id,
            "fields": FIELD_DOCS,
            "entries": entries,
        })
    return path


def load_profile(path: Path) -> list[dict[str, Any]]:
    """Read and validate a profile written by :func:`export_profile`.

    Raises:
        ConfigError: missing file, another format, or an unsupported version.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"profile file not found: {path}; write one with `charbench serve-sweep --export-profile {path}`")
    if path.suffix.lower() == ".csv":
        import pandas as pd

        df = pd.read_csv(path)
        if "format" not in df or set(df["format"]) != {FORMAT}:
            raise ConfigError(f"{path}: not a {FORMAT} CSV (column 'format' missing or different)")
        versions = set(int(v) for v in df["version"])
        if versions != {VERSION}:
            raise ConfigError(f"{path}: profile version {sorted(versions)} is not supported (this charbench reads version {VERSION})")
        out = []
        for row in df.to_dict("records"):
            e = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items() if not k.endswith("_provenance") and k not in ("format", "version")}
            e["provenance"] = {k[: -len("_provenance")]: v for k, v in row.items() if k.endswith("_provenance")}
            out.append(e)
        return out
    try:
        obj = json.loads(path.read_text())
    except ValueError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from exc
    if obj.get("format") != FORMAT:
        raise ConfigError(f"{path}: format {obj.get('format')!r} is not {FORMAT!r}")
    if obj.get("version") != VERSION:
        raise ConfigError(f"{path}: profile version {obj.get('version')} is not supported (this charbench reads version {VERSION})")
    return list(obj.get("entries") or [])


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
        ok = [r for r in recs if r.get("slo_attainment") is not None and r["slo_attainment"] >= attainment - 1e-12]
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
