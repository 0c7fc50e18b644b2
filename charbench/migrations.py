"""run.json format versions: numbered migrations that bring old run folders up to date.

Every run.json carries ``format_version`` (missing means 0, a folder from before versions).
:func:`migrate` applies, in order, each migration whose number is above the folder's
version; each is a function ``(meta, run_dir) -> meta`` that only adds or reshapes
run.json fields. ``RunStore.open`` migrates in memory always and writes run.json back when
the folder is writable, so readers (report, compare, history) never patch old folders
themselves. The pattern is simonw/llm's ``migrations.py``: append a new numbered entry to
:data:`MIGRATIONS`; never edit or renumber a released one.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable

from charbench.errors import RunStoreError
from charbench.parts import table_entry

Meta = dict[str, Any]
Migration = tuple[int, str, Callable[[Meta, Path], Meta]]

#: folder (relative to the run) where serve-sweep wrote per-request files before named tables
PRE_TABLES_REQUESTS_DIR = "requests"


def _m001_version_owner_tables(meta: Meta, run_dir: Path) -> Meta:
    """Fields every reader relies on, pid/host placeholders, and the ``tables`` listing.

    Folders from before versions may lack any field but ``study`` (old or hand-made ones);
    the report used to default them itself. Their per-request files (serve-sweep wrote
    ``requests/<load>.parquet`` directly) become named tables ``requests/<load>``.
    """
    defaults: Meta = {
        "label": "", "run_id": run_dir.name, "meta": {}, "status": None, "started": None, "finished": None,
        "points_total": None, "points_done": None, "points_failed": None, "report_hook": None, "device": None,
        "pid": None, "host": None,  # unknown owner: a `running` one is never called stale
    }
    out = {**defaults, **meta}
    tables = dict(out.get("tables") or {})
    req = run_dir / PRE_TABLES_REQUESTS_DIR
    if req.is_dir():
        import pyarrow.parquet as pq

        for f in sorted(req.glob("*.parquet")):
            try:
                footer = pq.read_metadata(f)
            except Exception:  # a damaged file stays unlisted; the report then says the load has no requests file
                continue
            tables.setdefault(f"{PRE_TABLES_REQUESTS_DIR}/{f.stem}",
                              table_entry(footer.num_rows, footer.schema.to_arrow_schema().names, f"{PRE_TABLES_REQUESTS_DIR}/{f.name}"))
    out["tables"] = tables
    return out


#: Column renames of migration 2 (one naming rule, :mod:`charbench.record`): old -> new.
METRIC_NAMES_002: dict[str, str] = {
    "avg_power_w": "mean_power_w",
    "steady_avg_power_w": "mean_steady_power_w",
    "energy_per_gemm_net_j": "energy_net_per_gemm_j",
    "energy_per_flop_net_pj": "energy_net_per_flop_pj",
    "tflop_per_s": "throughput_tflop_s",
    "flops_per_gemm": "work_per_gemm_flop",
    "iterations": "iteration_count",
    "correctness_rel_error": "correctness_rel_error_frac",
    "num_requests": "request_count",
    "completed": "completed_count",
    "error_rate": "error_frac",
    "peak_concurrency": "max_in_flight_count",
    "good_requests": "good_request_count",
    "slo_attainment": "slo_attainment_frac",
    "output_tokens_per_j": "output_per_energy_tok_j",
    "output_tokens_per_net_j": "output_per_energy_net_tok_j",
    "steady_output_tokens_per_j": "steady_output_per_energy_tok_j",
    "steady_output_tokens_per_net_j": "steady_output_per_energy_net_tok_j",
    "warmup_errors": "warmup_error_count",
    "unsent_requests": "unsent_request_count",
    "length_clipped_requests": "length_clipped_request_count",
    "engine_starts": "engine_start_count",
    "server_median_ttft_ms": "median_server_ttft_ms",
    "server_median_itl_ms": "median_server_itl_ms",
    "server_median_queue_ms": "median_server_queue_ms",
    "ttft_client_minus_server_median_ms": "median_ttft_client_minus_server_ms",
    "itl_client_minus_server_median_ms": "median_itl_client_minus_server_ms",
    "client_median_ttft_ms_joined": "median_client_joined_ttft_ms",
    "server_preemptions": "total_server_preemption_count",
}

#: Sampler statistics of migration 2: ``gpu0_power_mean_w`` -> ``mean_gpu0_power_w`` (any window prefix).
_SAMPLER_002 = re.compile(r"^(steady_)?((?:gpu\d+|cpu)_[a-z_]+?)_(mean|p50|p95|max)_(w|mhz|pct|c)$")
_SAMPLER_QUANTITIES = re.compile(r"^(gpu\d+_(power|sm_clock|mem_clock|util|temp)|cpu_(package|dram)_power)$")


def rename_002(name: str) -> str:
    """A column's name after migration 2 (unchanged when it was already right)."""
    if name in METRIC_NAMES_002:
        return METRIC_NAMES_002[name]
    m = _SAMPLER_002.match(name)
    if m and _SAMPLER_QUANTITIES.match(m.group(2)):
        return f"{m.group(3)}_{m.group(1) or ''}{m.group(2)}_{m.group(4)}"
    return name


#: column rename functions by the name a migration lists them under in run.json ``column_renames``
COLUMN_RENAMES: dict[str, Callable[[str], str]] = {"002-metric-names": rename_002}


def _m002_metric_names(meta: Meta, run_dir: Path) -> Meta:
    """Results written before the naming rule: their columns are renamed when read.

    Parquet parts are not rewritten (a run folder is append-only); ``column_renames`` in
    run.json tells :meth:`charbench.results.RunStore.records` which renames apply.
    """
    meta["column_renames"] = [*meta.get("column_renames", []), "002-metric-names"]
    return meta


def move_settings_003(config: dict[str, Any]) -> dict[str, Any]:
    """config.json from before the spine owned the runner settings, as it is written today.

    Each study's config used to carry ``idle_baseline_s``, ``cooldown_s``,
    ``sample_interval_s`` (and serve-sweep ``shuffle``); they move from ``study_config`` to
    ``settings``. A value ``settings`` already holds wins (the runner used it); a null one
    (a default that was never resolved) is dropped.
    """
    from charbench.settings import SETTING_NAMES

    study = config.get("study_config")
    if not isinstance(study, dict) or not any(k in study for k in SETTING_NAMES):
        return config
    settings = dict(config["settings"]) if isinstance(config.get("settings"), dict) else {}
    for k in SETTING_NAMES:
        if k in study and study[k] is not None:
            settings.setdefault(k, study[k])
    return {**config, "study_config": {k: v for k, v in study.items() if k not in SETTING_NAMES}, "settings": settings}


#: config.json reshapes by the name a migration lists them under in run.json ``config_reshapes``
CONFIG_RESHAPES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {"003-runner-settings": move_settings_003}


def _m003_runner_settings(meta: Meta, run_dir: Path) -> Meta:
    """Runner settings left the study configs: config.json is reshaped when read.

    config.json is not rewritten (it records how the run was made); ``config_reshapes`` in
    run.json tells :meth:`charbench.results.RunStore.config` which reshapes apply.
    """
    meta["config_reshapes"] = [*meta.get("config_reshapes", []), "003-runner-settings"]
    return meta


def reshape_config(config: dict[str, Any], reshapes: list[str]) -> dict[str, Any]:
    """Apply the run's ``config_reshapes`` to its config.json as read.

    Raises:
        RunStoreError: a reshape this charbench does not know.
    """
    unknown = [r for r in reshapes if r not in CONFIG_RESHAPES]
    if unknown:
        raise RunStoreError(f"run.json config_reshapes {', '.join(unknown)} unknown to this charbench; upgrade charbench")
    for r in reshapes:
        config = CONFIG_RESHAPES[r](config)
    return config


MIGRATIONS: list[Migration] = [
    (1, "add format_version, pid/host placeholders, tables", _m001_version_owner_tables),
    (2, "metric names follow one naming rule (renamed on read)", _m002_metric_names),
    (3, "runner settings move from study_config to settings in config.json (reshaped on read)", _m003_runner_settings),
]

#: the run.json format this charbench writes
FORMAT_VERSION: int = MIGRATIONS[-1][0]


def rename_columns(rows: list[dict[str, Any]], renames: list[str]) -> list[dict[str, Any]]:
    """Apply the run's ``column_renames`` to records as read, keys of ``null_reasons``/``provenance`` included.

    Args:
        rows: records as stored.
        renames: run.json ``column_renames`` (names in :data:`COLUMN_RENAMES`).

    Raises:
        RunStoreError: a rename this charbench does not know.
    """
    unknown = [r for r in renames if r not in COLUMN_RENAMES]
    if unknown:
        raise RunStoreError(f"run.json column_renames {', '.join(unknown)} unknown to this charbench; upgrade charbench")
    fns = [COLUMN_RENAMES[r] for r in renames]
    if not fns:
        return rows

    def new(name: str) -> str:
        for fn in fns:
            name = fn(name)
        return name

    out = []
    for row in rows:
        r = {new(k): v for k, v in row.items()}
        for col in ("null_reasons", "provenance"):
            if isinstance(r.get(col), str) and r[col]:
                try:
                    r[col] = json.dumps({new(k): v for k, v in json.loads(r[col]).items()}, sort_keys=True)
                except (ValueError, AttributeError):
                    pass  # not a JSON object: kept as written
        out.append(r)
    return out


def folder_version(meta: Meta, run_dir: Path) -> int:
    """The ``format_version`` of a run.json (0 when missing).

    Raises:
        RunStoreError: the version is not a whole number, or newer than :data:`FORMAT_VERSION`.
    """
    v = meta.get("format_version", 0)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise RunStoreError(f"{run_dir}: run.json format_version {v!r} is not a whole number >= 0; the run folder is damaged")
    if v > FORMAT_VERSION:
        raise RunStoreError(f"{run_dir}: run.json format_version {v} is newer than this charbench supports ({FORMAT_VERSION}); upgrade charbench")
    return v


def migrate(meta: Meta, run_dir: Path) -> tuple[Meta, bool]:
    """Apply every migration above the folder's version, in order.

    Args:
        meta: run.json as read.
        run_dir: the run folder (migrations may look at its files).

    Returns:
        ``(meta at FORMAT_VERSION, whether anything was applied)``.

    Raises:
        RunStoreError: see :func:`folder_version`.
    """
    version = folder_version(meta, run_dir)
    applied = False
    for number, _name, fn in MIGRATIONS:
        if number > version:
            meta = {**fn(dict(meta), Path(run_dir)), "format_version": number}
            applied = True
    return meta, applied
