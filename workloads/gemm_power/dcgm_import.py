"""``charbench gemm-power --import-dcgm DIR``: ``dcgmi dmon`` traces into a gemm-power run folder.

Nothing is measured: every point is one trace file, reduced to the mean POWER and SMCLK over
its steady samples (GPUTL >= 90, as the paper filters; the memory and idle traces of
experiments 16/17 keep every sample), with provenance "DCGM, imported". The inputs of each
point are regenerated with the paper's generator (``--generator paper``, bit for bit) and
their switching features computed, so the normal fit and report run on the paper's own
measurements (or on a cluster's own traces)::

    charbench gemm-power --import-dcgm input-dependent-power-sc24/a100_expt_results
    charbench gemm-power --import-dcgm my_traces/          # dmon files + mapping.csv

Layouts:

* the paper's release: ``<gpu>_expt_results/<dtype>/<n-name>/<seed>_<param>.tsv`` (baseline:
  ``<seed>.tsv``), dtype folders ``fp16-t`` (-> charbench ``fp16``, tensor cores), ``fp16``
  (-> ``fp16-simt``), ``fp32``, ``int8``; ``other_expt/{ones,zeros,idle}.tsv`` and
  ``other_expt/bit_flips/<n>.tsv`` (experiments 16, 17, idle, 18). DIR may be the
  ``<gpu>_expt_results`` folder or its parent.
* a plain folder of dmon files with ``mapping.csv``: columns ``file,dtype,experiment,value,seed``
  (experiment by charbench name or paper number).
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from charbench.errors import ConfigError

#: the paper's dtype folders -> charbench dtype names
PAPER_DTYPES = {"fp16-t": "fp16", "fp16": "fp16-simt", "fp32": "fp32", "int8": "int8"}
#: the paper's other_expt files -> charbench experiment names
OTHER_FILES = {"ones.tsv": "memory-ones", "zeros.tsv": "memory-zeros", "idle.tsv": "idle"}
STEADY_GPUTL = 90.0
PROVENANCE = "DCGM, imported"


@dataclass(frozen=True)
class TraceEntry:
    """One trace file and the point it measured."""

    path: Path
    dtype: str
    experiment: str
    value: float
    seed: int
    gpu: str = ""


def parse_dmon(path: Path) -> dict[str, list[float]]:
    """Columns of a ``dcgmi dmon`` text file: name -> values (``N/A`` -> NaN), GPU rows only.

    Raises:
        ConfigError: no ``#Entity`` header or no GPU rows.
    """
    header: list[str] | None = None
    cols: dict[str, list[float]] = {}
    for line in Path(path).read_text(errors="replace").splitlines():
        if line.startswith("#Entity"):
            header = line[1:].split()[1:]  # drop "Entity"
            cols = cols or {h: [] for h in header}
            continue
        parts = line.split()
        if header is None or len(parts) < 2 or parts[0] != "GPU":
            continue
        vals = parts[2:]  # "GPU 0" is the entity
        if len(vals) != len(header):
            continue  # a line cut short when dmon was killed
        for h, v in zip(header, vals):
            try:
                cols[h].append(float(v))
            except ValueError:
                cols[h].append(math.nan)
    if header is None:
        raise ConfigError(f"--import-dcgm: {path} is not dcgmi dmon output (no '#Entity' header line)")
    if not cols or not next(iter(cols.values())):
        raise ConfigError(f"--import-dcgm: {path} has no GPU sample rows")
    return cols


def steady_stats(cols: dict[str, list[float]], steady: bool = True) -> dict[str, Any]:
    """Mean POWER/SMCLK over steady samples (GPUTL >= 90), with the sample counts.

    Returns:
        ``mean_power_w``, ``mean_sm_clock_mhz``, ``max_power_w``, ``sample_count``,
        ``steady_sample_count``; a value with no samples is None.
    """
    power = cols.get("POWER", [])
    util = cols.get("GPUTL", [math.nan] * len(power))
    clock = cols.get("SMCLK", [math.nan] * len(power))
    keep = [i for i in range(len(power)) if (not steady or (util[i] == util[i] and util[i] >= STEADY_GPUTL)) and power[i] == power[i]]
    pw = [power[i] for i in keep]
    ck = [clock[i] for i in keep if clock[i] == clock[i]]
    return {
        "mean_power_w": sum(pw) / len(pw) if pw else None,
        "max_power_w": max(pw) if pw else None,
        "mean_sm_clock_mhz": sum(ck) / len(ck) if ck else None,
        "sample_count": len(power),
        "steady_sample_count": len(pw),
    }


def _experiment_by_number(num: int) -> str:
    from charbench.workloads.gemm_power.experiments import EXPERIMENTS

    for e in EXPERIMENTS.values():
        if e.number == num:
            return e.name
    raise ConfigError(f"--import-dcgm: no experiment numbered {num}")


def _results_roots(root: Path) -> list[Path]:
    if root.name.endswith("_expt_results"):
        return [root]
    found = sorted(p for p in root.glob("*_expt_results") if p.is_dir())
    return found


def discover(root: Path) -> list[TraceEntry]:
    """Every trace under ``root`` (the paper's layout, or a folder with ``mapping.csv``).

    Raises:
        ConfigError: the folder is missing, or has neither layout (the message says what is expected).
    """
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"--import-dcgm: {root} is not a folder")
    mapping = root / "mapping.csv"
    if mapping.is_file():
        return _from_mapping(root, mapping)
    entries: list[TraceEntry] = []
    for res in _results_roots(root):
        gpu = res.name[: -len("_expt_results")]
        for dfolder in sorted(p for p in res.iterdir() if p.is_dir()):
            if dfolder.name == "other_expt":
                entries.extend(_other(dfolder, gpu))
                continue
            dtype = PAPER_DTYPES.get(dfolder.name)
            if dtype is None:
                continue  # bit_metrics, sample_matrices
            for efolder in sorted(p for p in dfolder.iterdir() if p.is_dir()):
                m = re.match(r"^(\d+)-", efolder.name)
                if efolder.name == "baseline":
                    exp = "baseline"
                elif m:
                    exp = _experiment_by_number(int(m.group(1)))
                else:
                    continue
                for f in sorted(efolder.glob("*.tsv")):
                    stem = f.stem
                    if exp == "baseline":
                        seed_s, val_s = stem, "0"
                    elif "_" in stem:
                        seed_s, val_s = stem.split("_", 1)
                    else:
                        continue
                    try:
                        entries.append(TraceEntry(f, dtype, exp, float(val_s), int(seed_s), gpu))
                    except ValueError:
                        continue
    if not entries:
        raise ConfigError(f"--import-dcgm: no traces in {root}; expected the paper's layout "
                          "(<gpu>_expt_results/<dtype>/<n-name>/<seed>_<param>.tsv) or dmon files with a mapping.csv "
                          "(columns file,dtype,experiment,value,seed)")
    return entries


def _other(folder: Path, gpu: str) -> list[TraceEntry]:
    out = []
    for name, exp in OTHER_FILES.items():
        if (folder / name).is_file():
            out.append(TraceEntry(folder / name, "int8", exp, 0.0, 1, gpu))
    flips = folder / "bit_flips"
    if flips.is_dir():
        for f in sorted(flips.glob("*.tsv")):
            if f.stem.isdigit():
                out.append(TraceEntry(f, "int8", "bit-flips", float(f.stem), 1, gpu))
    return out


def _from_mapping(root: Path, mapping: Path) -> list[TraceEntry]:
    from charbench.kernels.gemm import dtype_names
    from charbench.workloads.gemm_power.experiments import EXPERIMENTS

    entries = []
    with mapping.open(newline="") as fh:
        reader = csv.DictReader(fh)
        need = {"file", "dtype", "experiment", "value", "seed"}
        if reader.fieldnames is None or not need <= set(reader.fieldnames):
            raise ConfigError(f"--import-dcgm: {mapping} needs the columns file,dtype,experiment,value,seed; it has {reader.fieldnames}")
        for i, row in enumerate(reader, start=2):
            exp = row["experiment"].strip()
            if exp.isdigit():
                exp = _experiment_by_number(int(exp))
            if exp not in EXPERIMENTS:
                raise ConfigError(f"--import-dcgm: {mapping} line {i}: unknown experiment {exp!r}")
            dt = row["dtype"].strip()
            if dt not in dtype_names():
                raise ConfigError(f"--import-dcgm: {mapping} line {i}: unknown dtype {dt!r}; valid: {', '.join(dtype_names())}")
            f = root / row["file"].strip()
            if not f.is_file():
                raise ConfigError(f"--import-dcgm: {mapping} line {i}: file not found: {f}")
            try:
                value, seed = float(row["value"]), int(row["seed"])
            except ValueError:
                raise ConfigError(f"--import-dcgm: {mapping} line {i}: value must be a number and seed an integer") from None
            if not math.isfinite(value):
                raise ConfigError(f"--import-dcgm: {mapping} line {i}: value {row['value']!r} is not finite")
            entries.append(TraceEntry(f, dt, exp, value, seed, ""))
    if not entries:
        raise ConfigError(f"--import-dcgm: {mapping} lists no traces")
    return entries


# --- the import as a study: one point per trace, nothing measured ----------------------------

from charbench.study import Context, Study  # noqa: E402
from charbench.workloads.gemm_power import STUDY  # noqa: E402

IMPORTED_BACKEND = "cutlass (DCGM, imported)"


class DcgmImportStudy(Study):
    """Turns traces into gemm-power records (power from the traces, features from regenerated inputs)."""

    name = STUDY.command
    report_hook = STUDY.report_hook

    def __init__(self, root: Path, entries: list[TraceEntry], feature_size: int = 2048, feature_seed: str = "first") -> None:
        """Args: root: the imported folder; entries: from :func:`discover`; feature_size: M = N = K of the
        regenerated inputs (the paper: 2048); feature_seed: ``first`` (the lowest seed of each point's
        traces, computed once per point) or ``each``."""
        self.root = Path(root)
        self.entries = entries
        self.feature_size = int(feature_size)
        self.feature_seed = feature_seed
        self._first: dict[tuple[str, str, float], int] = {}
        for e in entries:
            k = (e.dtype, e.experiment, e.value)
            self._first[k] = min(self._first.get(k, e.seed), e.seed)
        self._features: dict[tuple[str, str, float, int], dict[str, float]] = {}

    def config_dict(self) -> dict[str, Any]:
        """What was imported (saved as config.json)."""
        return {"import_dcgm": str(self.root), "traces": len(self.entries), "generator": "paper",
                "feature_size": self.feature_size, "feature_seed": self.feature_seed, "steady_rule": f"GPUTL >= {STEADY_GPUTL:g}"}

    def points(self) -> list[dict[str, Any]]:
        """One point per trace file."""
        from charbench.workloads.gemm_power.experiments import EXPERIMENTS

        return [{"dtype": e.dtype, "backend": IMPORTED_BACKEND, "experiment": e.experiment, "param": EXPERIMENTS[e.experiment].param,
                 "value": e.value, "seed": e.seed, "repeat": 0, "trace": str(e.path.relative_to(self.root))} for e in self.entries]

    def _feats(self, dtype: str, exp_name: str, value: float, seed: int) -> tuple[dict[str, float], int]:
        from charbench.kernels.gemm import get_dtype
        from charbench.kernels.switching import field_switching_stats, switching_stats
        from charbench.workloads.gemm_power.experiments import get_experiment
        from charbench.workloads.gemm_power.generators import generate_pair

        fseed = self._first[(dtype, exp_name, value)] if self.feature_seed == "first" else seed
        spec = get_dtype(dtype)
        key = (spec.storage, exp_name, value, fseed)  # fp16 and fp16-simt share their inputs
        if key not in self._features:
            n = self.feature_size
            a, b, _ = generate_pair(get_experiment(exp_name), value, spec, n, n, n, fseed, "cpu", generator="paper")
            self._features[key] = {**switching_stats(a, b, spec), **field_switching_stats(a, b, spec)}
        return self._features[key], fseed

    def run_point(self, params: dict[str, Any], ctx: Context) -> Any:
        """Read one trace; add the regenerated inputs' switching features (GEMM experiments)."""
        from charbench.record import Record
        from charbench.workloads.gemm_power.analysis import NON_GEMM

        path = self.root / params["trace"]
        exp = params["experiment"]
        steady = exp not in ("memory-ones", "memory-zeros", "idle")
        st = steady_stats(parse_dmon(path), steady=steady)
        rec = Record()
        prov = f"{PROVENANCE} ({params['trace']}; mean over {'samples with GPUTL >= 90' if steady else 'all samples'})"
        why = "no steady samples (GPUTL >= 90) in the trace" if steady else "no samples in the trace"
        for key in ("mean_power_w", "max_power_w", "mean_sm_clock_mhz"):
            rec.set(key, st[key], prov, reason=why)
        rec.update({"sample_count": st["sample_count"], "steady_sample_count": st["steady_sample_count"],
                    "device_name": (next((e.gpu for e in self.entries if e.gpu), "") or "imported").upper() + " (DCGM, imported)",
                    "generator": "paper", "m": self.feature_size, "n": self.feature_size, "k": self.feature_size})
        if exp in NON_GEMM:
            return rec
        feats, fseed = self._feats(params["dtype"], exp, float(params["value"]), int(params["seed"]))
        rec.update(feats)
        rec.set("features_seed", fseed)
        return rec

    def finalize(self, store: Any, ctx: Context) -> dict[str, Any]:
        """The normal gemm-power fits and headline."""
        from charbench.workloads.gemm_power.run import finalize_run

        return finalize_run(store)


def entries_for(root: Path, dtypes: list[str] | None = None, experiments: list[str] | None = None) -> list[TraceEntry]:
    """:func:`discover`, filtered by dtype and experiment names when given.

    Raises:
        ConfigError: nothing left after the filter.
    """
    entries = discover(root)
    if dtypes:
        entries = [e for e in entries if e.dtype in dtypes]
    if experiments:
        entries = [e for e in entries if e.experiment in experiments]
    if not entries:
        raise ConfigError(f"--import-dcgm: no traces in {root} match --dtypes/--experiments")
    return entries
