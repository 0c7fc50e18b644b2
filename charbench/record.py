"""Records: the one naming rule for metrics and the builder every study fills.

The naming rule (vLLM's form, so serving numbers read like ``vllm bench serve`` output)::

    [statistic_]quantity_unit        p99_ttft_ms, mean_gpu0_power_w, energy_net_per_gemm_j

The statistic, when there is one, comes first and is one of :data:`STATISTICS`; the unit
comes last and is one of :data:`UNITS` (the longest unit that matches wins, so
``output_throughput_tok_s`` is ``tok_s``, not ``s``). A window prefix (``steady_``) goes
after the statistic: ``mean_steady_power_w`` (see :func:`with_prefix`). Knobs keep their
CLI names (``request_rate_rps``, ``batch``) and bookkeeping columns are not metrics.

:class:`Record` replaces the magic ``_reasons``/``_provenance``/``_warnings`` keys: a value is
``set`` (with its provenance), ``null`` (with its reason) or ``derive``d from other keys, in
which case a missing source makes it null with that source's reason and its provenance is the
sources' (``estimated`` when any source is estimated).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any, Callable

#: Statistics a metric name may start with.
STATISTICS: frozenset[str] = frozenset({"mean", "median", "p50", "p90", "p95", "p99", "min", "max", "std", "total"})

#: Units a metric name ends with (multi-part units are matched before their tails).
UNITS: frozenset[str] = frozenset({
    "s", "ms", "us", "j", "pj", "w", "mhz", "c", "pct", "frac", "rps", "tok_s", "tok_j", "count", "tokens", "bits",
    "flop", "flop_s", "tflop_s", "bytes", "mib", "h", "wh", "kwh", "kgco2e", "usd",
})

_UNITS_BY_LENGTH = sorted(UNITS, key=lambda u: -u.count("_"))

PROV_ESTIMATED = "estimated"


class MetricNameError(ValueError):
    """A key does not follow the naming rule."""


def parse_metric(name: str) -> tuple[str | None, str, str]:
    """Split a metric name into (statistic, quantity, unit).

    Args:
        name: a record key such as ``p99_ttft_ms``.

    Returns:
        ``(statistic or None, quantity, unit)``, e.g. ``("p99", "ttft", "ms")``.

    Raises:
        MetricNameError: the name has no known unit last or no quantity.
    """
    unit = next((u for u in _UNITS_BY_LENGTH if name.endswith("_" + u)), None)
    if unit is None:
        raise MetricNameError(f"metric {name!r} does not end in a unit (_{', _'.join(sorted(UNITS))}); "
                              "name it [statistic_]quantity_unit, e.g. p99_ttft_ms")
    head = name[: -len(unit) - 1]
    first, _, rest = head.partition("_")
    statistic = first if first in STATISTICS and rest else None
    quantity = rest if statistic else head
    if not quantity or quantity in STATISTICS:
        raise MetricNameError(f"metric {name!r} has no quantity between its statistic and unit; e.g. p99_ttft_ms")
    return statistic, quantity, unit


def metric_name(statistic: str | None, quantity: str, unit: str) -> str:
    """The key for (statistic, quantity, unit): the inverse of :func:`parse_metric`."""
    return "_".join(p for p in (statistic, quantity, unit) if p)


def with_prefix(name: str, prefix: str) -> str:
    """``name`` for a window ``prefix``: after the statistic (``mean_power_w`` -> ``mean_steady_power_w``).

    A name that is not a metric (``gpu0_power_kind``) just gets the prefix in front.
    """
    if not prefix:
        return name
    try:
        statistic, quantity, unit = parse_metric(name)
    except MetricNameError:
        return prefix + name
    return metric_name(statistic, prefix + quantity, unit)


def is_estimated(provenance: str | None) -> bool:
    """Whether a provenance string marks an estimated (modeled) value."""
    return str(provenance or "").startswith(PROV_ESTIMATED)


class Record(Mapping[str, Any]):
    """A flat record under construction: values with their null reasons, provenance and warnings.

    Read it like a dict (``rec["energy_j"]``, ``rec.get(...)``, ``"k" in rec``); write it
    only through :meth:`set`, :meth:`null`, :meth:`derive`, :meth:`merge` and :meth:`warn`,
    so that no value loses its reason or provenance.
    """

    def __init__(self, values: Mapping[str, Any] | None = None) -> None:
        self._values: dict[str, Any] = {}
        self.reasons: dict[str, str] = {}
        self.provenance: dict[str, str] = {}
        self.warnings: list[str] = []
        #: keys whose +inf is a value of their own (serve-sweep's max-throughput rate), kept as-is
        self.infinite_ok: set[str] = set()
        for k, v in (values or {}).items():
            self.set(k, v)

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Record({self._values!r}, reasons={self.reasons!r}, provenance={self.provenance!r})"

    def set(self, key: str, value: Any, provenance: str | None = None, *, reason: str | None = None,
            allow_inf: bool = False) -> Record:
        """Store ``value`` under ``key``.

        Args:
            key: the column.
            value: its value; None needs ``reason`` (else it reads "not measured").
            provenance: what measured it (``nvml``, ``rapl``, ``estimated: ...``).
            reason: why a None value is missing.
            allow_inf: ``+inf`` is a meaningful value here (stored as-is; otherwise the
                runner turns non-finite numbers into nulls).
        """
        if value is None:
            return self.null(key, reason or "not measured")
        self._values[key] = value
        if allow_inf:
            self.infinite_ok.add(key)
        self.reasons.pop(key, None)
        if provenance is not None:
            self.provenance[key] = provenance
        else:
            self.provenance.pop(key, None)
        return self

    def update(self, values: Mapping[str, Any]) -> Record:
        """:meth:`set` each item (values without provenance, e.g. knobs and descriptors)."""
        for k, v in values.items():
            self.set(k, v)
        return self

    def null(self, key: str, reason: str) -> Record:
        """Store ``key`` as missing, with the reason the report shows."""
        self._values[key] = None
        self.reasons[key] = reason
        self.provenance.pop(key, None)
        return self

    def reason(self, key: str) -> str | None:
        """Why ``key`` is missing (None when it has a value)."""
        if self._values.get(key) is not None:
            return None
        return self.reasons.get(key, "not measured" if key in self._values else f"{key} was not recorded")

    def derive(self, key: str, fn: Callable[..., Any], *sources: str, formula: str | None = None,
               reason: str | None = None) -> Record:
        """``key = fn(*values of sources)``, null with the first missing source's reason.

        Args:
            key: the derived column.
            fn: computes it from the sources' values; returning None (e.g. a division by
                zero avoided) makes it null with ``reason``.
            sources: the keys it derives from.
            formula: how it is derived, appended to the inherited provenance.
            reason: why it is null when every source has a value but ``fn`` returned None.
        """
        for s in sources:
            if self._values.get(s) is None:
                return self.null(key, self.reason(s) or "not measured")
        value = fn(*(self._values[s] for s in sources))
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            return self.null(key, reason or f"{formula or key} is undefined for these values")
        provs = list(dict.fromkeys(p for s in sources if (p := self.provenance.get(s))))
        prov = None
        if provs:
            estimated = [p for p in provs if is_estimated(p)]
            prov = estimated[0] if estimated else ",".join(provs)
        if formula and prov is not None:
            prov = f"{prov} ({formula})"
        return self.set(key, value, prov)

    def warn(self, message: str) -> Record:
        """Add a warning the run log and report show."""
        self.warnings.append(message)
        return self

    def merge(self, other: Mapping[str, Any]) -> Record:
        """Take ``other``'s values (later wins) with its reasons, provenance and warnings."""
        if isinstance(other, Record):
            for k, v in other.items():
                if v is None:
                    self.null(k, other.reasons.get(k, "not measured"))
                else:
                    self.set(k, v, other.provenance.get(k), allow_inf=k in other.infinite_ok)
            self.warnings.extend(other.warnings)
        else:
            self.update(other)
        return self

    def to_dict(self) -> dict[str, Any]:
        """The values only (a copy)."""
        return dict(self._values)


def as_record(rec: Mapping[str, Any]) -> Record:
    """``rec`` as a :class:`Record` (a plain dict's None values read "not measured").

    Raises:
        TypeError: a plain dict carries the old ``_reasons``/``_provenance``/``_warnings`` keys.
    """
    if isinstance(rec, Record):
        return rec
    magic = sorted(k for k in rec if k.startswith("_"))
    if magic:
        raise TypeError(f"record keys {', '.join(magic)}: build the record with charbench.record.Record "
                        "(null(key, reason), set(key, value, provenance), warn(message)) instead of magic keys")
    return Record(rec)
