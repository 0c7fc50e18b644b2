"""Replay of the Azure LLM inference traces (2023 and 2024 files).

Schema (Azure/AzurePublicDataset, ``AzureLLMInferenceDataset2023.md`` and ``...2024.md``):
``TIMESTAMP, ContextTokens, GeneratedTokens``, one row per request. The 2023 files
(``AzureLLMInferenceTrace_{code,conv}.csv``) write timestamps like
``2023-11-16 18:15:46.6805900``; the 2024 one-week files
(``AzureLLMInferenceTrace_{code,conv}_1week.csv``) may carry a UTC offset. Both parse::

    tr = load_azure_trace(Path("AzureLLMInferenceTrace_conv.csv"), time_scale=0.5,
                          start_s=600, duration_s=60)
    tr.times_s, tr.input_len, tr.output_len     # numpy arrays, times from 0

The time window is taken on the trace's own clock (seconds after its first request);
``time_scale`` then multiplies the offsets: 0.5 replays twice as fast, 2 half as fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from charbench.errors import ConfigError

REQUIRED_COLUMNS: tuple[str, ...] = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


@dataclass
class TraceRequests:
    """Requests selected from a trace.

    Attributes:
        times_s: send offsets after scaling (s from the first selected request).
        input_len: prompt tokens per request (``ContextTokens``).
        output_len: output tokens per request (``GeneratedTokens``).
        source: the file.
        rows_in_file: requests in the whole file.
        window: the selection actually applied (start, duration, scale, cap).
    """

    times_s: np.ndarray
    input_len: np.ndarray
    output_len: np.ndarray
    source: str
    rows_in_file: int
    window: dict[str, float | int | None] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.times_s)

    @property
    def mean_rate_rps(self) -> float | None:
        """Mean request rate of the selection after scaling (None for a single request)."""
        if len(self.times_s) < 2 or self.times_s[-1] <= 0:
            return None
        return float((len(self.times_s) - 1) / self.times_s[-1])


def load_azure_trace(
    path: Path,
    time_scale: float = 1.0,
    start_s: float = 0.0,
    duration_s: float | None = None,
    max_requests: int | None = None,
) -> TraceRequests:
    """Read an Azure LLM inference trace CSV and select a time window.

    Args:
        path: the CSV file.
        time_scale: multiplies send offsets (< 1 replays faster).
        start_s: window start, seconds after the trace's first request.
        duration_s: window length in trace seconds (None = to the end).
        max_requests: keep at most this many requests of the window.

    Raises:
        ConfigError: missing file, missing columns, unparsable timestamps or counts,
            bad window arguments, or an empty selection.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--trace: file not found: {path}; download AzureLLMInferenceTrace_conv.csv (2023) or ..._1week.csv (2024) from Azure/AzurePublicDataset")
    if not time_scale > 0:
        raise ConfigError(f"--time-scale: must be > 0, got {time_scale}")
    if start_s < 0:
        raise ConfigError(f"--trace-start: must be >= 0 s, got {start_s}")
    if duration_s is not None and not duration_s > 0:
        raise ConfigError(f"--trace-duration: must be > 0 s, got {duration_s}")
    if max_requests is not None and max_requests < 1:
        raise ConfigError(f"--num-requests: must be >= 1, got {max_requests}")
    try:
        df = pd.read_csv(path, skipinitialspace=True)
    except Exception as exc:  # pandas raises several parser error types
        raise ConfigError(f"--trace {path}: not a readable CSV ({type(exc).__name__}: {exc})") from exc
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ConfigError(f"--trace {path}: missing column(s) {', '.join(missing)}; an Azure LLM trace has {', '.join(REQUIRED_COLUMNS)} (found: {', '.join(df.columns) or 'none'})")
    if len(df) == 0:
        raise ConfigError(f"--trace {path}: the file has no requests")
    try:
        ts = pd.to_datetime(df["TIMESTAMP"].astype(str).str.strip(), format="ISO8601", utc=True)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"--trace {path}: cannot parse TIMESTAMP ({exc}); expected e.g. 2023-11-16 18:15:46.6805900") from exc
    counts = {}
    for col in ("ContextTokens", "GeneratedTokens"):
        vals = pd.to_numeric(df[col], errors="coerce")
        bad = vals.isna() | (vals < 0)
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise ConfigError(f"--trace {path}: {col} must be a non-negative integer; row {row + 2} has {df[col].iloc[row]!r}")
        counts[col] = vals.to_numpy(dtype=np.int64)
    rel = (ts - ts.min()).dt.total_seconds().to_numpy(dtype=float)
    order = np.argsort(rel, kind="stable")
    offsets = rel[order]
    inp = counts["ContextTokens"][order]
    out = counts["GeneratedTokens"][order]
    keep = offsets >= start_s
    if duration_s is not None:
        keep &= offsets < start_s + duration_s
    idx = np.flatnonzero(keep)
    if max_requests is not None:
        idx = idx[:max_requests]
    if len(idx) == 0:
        span = float(offsets[-1])
        raise ConfigError(f"--trace-start/--trace-duration: no request of {path.name} falls in [{start_s}, {start_s + (duration_s or float('inf'))}) s; the trace spans 0-{span:.1f} s")
    sel = offsets[idx]
    times = (sel - sel[0]) * time_scale
    # A request that asked for zero output tokens still needs one to be measurable.
    return TraceRequests(
        times_s=times,
        input_len=np.maximum(inp[idx], 1),
        output_len=np.maximum(out[idx], 1),
        source=str(path),
        rows_in_file=len(df),
        window={"start_s": start_s, "duration_s": duration_s, "time_scale": time_scale, "max_requests": max_requests},
    )
