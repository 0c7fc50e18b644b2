"""The serving performance/power profile format: what a serving sweep writes and cluster simulation reads.

A study that measures serving (``charbench serve-sweep --export-profile FILE``) turns its
records into ENTRIES and writes them with :func:`write_profile`; a simulator reads them
back, validated, with :func:`load_profile`. ``FILE.json`` (default) or ``FILE.csv``::

    write_profile(entries, Path("h100-profile.json"), source_run="20261130-101500")
    prof = load_profile(Path("h100-profile.json"))     # validated; list of entries

Format ``charbench-serving-profile``, version 2 (metric names follow :mod:`charbench.record`;
:func:`load_profile` reads version 1 files under today's names).

JSON: an object ``{"format": "charbench-serving-profile", "version": 2, "created": ISO time,
"source_run": run id, "fields": {name: description}, "entries": [ENTRY, ...]}``.
CSV: one row per ENTRY with the same field names, plus ``format`` and ``version``
columns; each ``provenance`` item becomes a column ``<field>_provenance``.

ENTRY fields (units in the names; null = not measured, never 0):

* key: ``model``, ``tp``, ``dtype``, ``max_num_seqs``, ``sm_freq_mhz`` (null = clocks not
  locked), ``power_limit_w`` (null = default limit), ``workload_class``
  (e.g. ``in512-out128``, ``azure-conv``, ``trace``), ``input_len``, ``output_len``
  (central lengths; null for trace/azure classes), ``load_kind`` (``rate``,
  ``concurrency`` or ``trace``), ``request_rate_rps`` (offered request rate, serve-sweep's
  knob: ``inf`` = max throughput, all at once, which JSON holds as the text ``"inf"``; null
  unless ``load_kind`` is ``rate``), ``concurrency``.
* performance: ``request_throughput_rps``, ``output_throughput_tok_s``,
  ``total_token_throughput_tok_s``, ``{median,p90,p99}_{ttft,tpot,itl,e2el}_ms``,
  ``slo_attainment_frac``, ``error_frac``.
* power/energy: ``mean_power_w``, ``energy_per_output_token_j``, ``energy_per_request_j``,
  ``energy_basis`` (``steady`` when the steady-state window existed, else ``point``, the
  whole load).
* ``provenance``: for ``mean_power_w``, ``energy_per_output_token_j`` and
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
VERSION = 2
#: versions load_profile reads (older ones are upgraded to VERSION names)
READABLE_VERSIONS: tuple[int, ...] = (1, 2)

KEY_FIELDS: tuple[str, ...] = (
    "model", "tp", "dtype", "max_num_seqs", "sm_freq_mhz", "power_limit_w", "workload_class",
    "input_len", "output_len", "load_kind", "request_rate_rps", "concurrency",
)
PERF_FIELDS: tuple[str, ...] = (
    "request_throughput_rps", "output_throughput_tok_s", "total_token_throughput_tok_s",
    *(f"{s}_{m}_ms" for m in ("ttft", "tpot", "itl", "e2el") for s in ("median", "p90", "p99")),
    "slo_attainment_frac", "error_frac",
)
ENERGY_FIELDS: tuple[str, ...] = ("mean_power_w", "energy_per_output_token_j", "energy_per_request_j", "energy_basis")

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
    "load_kind": "rate | concurrency | trace",
    "request_rate_rps": "offered request rate in requests/s (inf: max throughput, all at once)",
    "concurrency": "closed-loop users",
    "request_throughput_rps": "completed requests/s",
    "output_throughput_tok_s": "output tokens/s",
    "total_token_throughput_tok_s": "input+output tokens/s",
    "slo_attainment_frac": "fraction of requests meeting every SLO",
    "error_frac": "fraction of failed requests",
    "mean_power_w": "average device power over energy_basis window in W",
    "energy_per_output_token_j": "J per output token over energy_basis window",
    "energy_per_request_j": "J per completed request (whole load)",
    "energy_basis": "steady | point",
}
for _m in ("ttft", "tpot", "itl", "e2el"):
    for _s in ("median", "p90", "p99"):
        FIELD_DOCS[f"{_s}_{_m}_ms"] = f"{_s} {_m.upper()} in ms"


def write_profile(entries: list[dict[str, Any]], path: Path, source_run: str | None = None) -> Path:
    """Write profile ``entries`` (see the module docstring) to ``path`` (``.csv`` -> CSV, else JSON).

    Args:
        entries: one dict per measured load, with the ENTRY fields and a ``provenance`` dict.
        path: the file to write.
        source_run: the run id the entries come from (JSON only).

    Raises:
        ConfigError: no entry to write.
    """
    if not entries:
        raise ConfigError("--export-profile: the run has no completed point to export")
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
            "source_run": source_run,
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
        raise ConfigError(f"profile file not found: {path}; write one with the --export-profile option of a serving sweep")
    if path.suffix.lower() == ".csv":
        import pandas as pd

        df = pd.read_csv(path)
        if "format" not in df or set(df["format"]) != {FORMAT}:
            raise ConfigError(f"{path}: not a {FORMAT} CSV (column 'format' missing or different)")
        versions = set(int(v) for v in df["version"])
        if len(versions) != 1 or not versions <= set(READABLE_VERSIONS):
            raise ConfigError(f"{path}: profile version {sorted(versions)} is not supported (this charbench reads versions {', '.join(map(str, READABLE_VERSIONS))})")
        out = []
        for row in df.to_dict("records"):
            e = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items() if not k.endswith("_provenance") and k not in ("format", "version")}
            e["provenance"] = {k[: -len("_provenance")]: v for k, v in row.items() if k.endswith("_provenance")}
            out.append(_upgrade(e, int(row["version"])))
        return out
    try:
        obj = json.loads(path.read_text())
    except ValueError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from exc
    if obj.get("format") != FORMAT:
        raise ConfigError(f"{path}: format {obj.get('format')!r} is not {FORMAT!r}")
    if obj.get("version") not in READABLE_VERSIONS:
        raise ConfigError(f"{path}: profile version {obj.get('version')} is not supported (this charbench reads versions {', '.join(map(str, READABLE_VERSIONS))})")
    return [_upgrade(dict(e), int(obj["version"])) for e in obj.get("entries") or []]


def _upgrade(entry: dict[str, Any], version: int) -> dict[str, Any]:
    """An entry under version :data:`VERSION` names, its ``request_rate_rps`` a number (``"inf"`` -> inf)."""
    if version == 1:
        from charbench.migrations import rename_002

        kind = entry.pop("rate_kind", None)
        rate = entry.pop("rate_rps", None)
        entry = {rename_002(k): v for k, v in entry.items()}
        entry["provenance"] = {rename_002(k): v for k, v in (entry.get("provenance") or {}).items()}
        entry["load_kind"] = "rate" if kind == "max-throughput" else kind
        entry["request_rate_rps"] = math.inf if kind == "max-throughput" else rate
    rate = entry.get("request_rate_rps")
    if isinstance(rate, str):
        entry["request_rate_rps"] = float(rate)  # "inf": JSON's spelling of the max-throughput rate
    return entry
