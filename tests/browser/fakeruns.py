"""Build run folders with fake measurements for compare/history/browser tests.

::

    run = make_run(tmp_path, "gemm-power", points=expand({"dtype": ["fp16", "fp32"], "seed": [0, 1, 2]}),
                   measure=lambda p: {"energy_j": 10.0, "mean_power_w": 100.0, "time_s": 0.1})

Rows go through :func:`charbench.study.finalize_record`, the runner's own record
builder, and into a :class:`charbench.results.RunStore`, so the folder has exactly the
layout a real study run has (run.json, config.json, env.json, results, samples, failures).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, Callable

from charbench.record import Record
from charbench.results import RunStore
from charbench.study import finalize_record
from charbench.sweep import point_key


def make_run(
    root: Path,
    study: str,
    points: list[dict[str, Any]],
    measure: Callable[[dict[str, Any]], dict[str, Any]],
    *,
    label: str = "",
    now: dt.datetime | None = None,
    status: str = "completed",
    failures: list[dict[str, Any]] | None = None,
    meta: dict[str, str] | None = None,
    env: dict[str, Any] | None = None,
    key: Callable[[dict[str, Any]], str] = point_key,
    samples: bool = True,
) -> Path:
    """Write a run folder; return its path.

    Args:
        root: results root (the run lands in ``root/<study>/<stamp>-<label>``).
        study: study name.
        points: knob dicts, in run order (their key order is kept in the columns).
        measure: params -> metric fields (unit-suffixed): a dict, or a :class:`Record` for nulls with reasons.
        label: run label.
        now: start time (also the folder stamp).
        status: final status in run.json.
        failures: knob dicts of points that failed (recorded under failures/).
        meta: ``--meta`` pairs.
        env: env.json contents (default: a small fake inventory).
        key: point-key function (a different one mimics another knob order in the key text).
        samples: write a samples.parquet timeline.
    """
    env = env if env is not None else {"charbench_version": "0.1.0", "git_sha": "0123456789abcdef", "hostname": "testhost",
                                      "cpu_model": "Fake CPU", "cpu_cores": 2, "gpus": [{"name": "Fake GPU 80GB"}], "meters": []}
    store = RunStore.create(root, study, label=label, config={"study": study, "study_config": {"points": len(points)}},
                            env=env, meta=meta, now=now)
    store.update_meta(points_total=len(points) + len(failures or []), device="cuda:0")
    if now is not None:
        store.update_meta(started=now.astimezone().isoformat(timespec="seconds"))
    # a Record keeps its null reasons; a plain dict is copied (finalize_record adds columns)
    rows = [finalize_record(_own(measure(p)), p, key(p), i) for i, p in enumerate(points)]
    if rows:
        store.append_records(rows)
    for p in failures or []:
        store.record_failure(key(p), RuntimeError(f"fake failure at {key(p)}"), p)
    if samples:
        store.append_samples([
            {"t_s": 0.1 * i, "gpu0_power_w": 100.0 + (i % 7), "gpu0_sm_clock_mhz": 1410.0, "gpu0_temp_c": 50.0 + 0.1 * i}
            for i in range(50)
        ])
    store.finish(status)
    return store.path


def _own(rec: dict[str, Any] | Record) -> dict[str, Any] | Record:
    """A fresh record: a :class:`Record` as is (its reasons kept), a dict copied."""
    return rec if isinstance(rec, Record) else dict(rec)
