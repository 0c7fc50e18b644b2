"""Azure LLM trace parsing (2023 and 2024 timestamp styles), windows, bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from charbench.errors import ConfigError
from charbench.workloads.serving.traces import load_azure_trace

CSV_2023 = """TIMESTAMP,ContextTokens,GeneratedTokens
2023-11-16 18:15:46.6805900,374,44
2023-11-16 18:15:50.9951690,396,109
2023-11-16 18:15:51.2224670,879,55
2023-11-16 18:15:51.3910170,91,0
2023-11-16 18:16:52.5732450,91,16
"""

CSV_2024 = """TIMESTAMP,ContextTokens,GeneratedTokens
2024-05-10 00:00:01.000000+00:00,100,10
2024-05-10 00:00:00.000000+00:00,200,20
2024-05-10 00:00:03.500000+00:00,300,30
"""


def _write(tmp_path: Path, text: str, name: str = "t.csv") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_2023_format(tmp_path: Path) -> None:
    tr = load_azure_trace(_write(tmp_path, CSV_2023))
    assert len(tr) == 5 and tr.rows_in_file == 5
    np.testing.assert_allclose(tr.times_s[:3], [0.0, 4.314579, 4.541877], atol=1e-6)
    assert tr.input_len.tolist() == [374, 396, 879, 91, 91]
    assert tr.output_len.tolist()[3] == 1  # 0 generated tokens -> 1 (measurable)


def test_2024_format_sorted_scaled_and_windowed(tmp_path: Path) -> None:
    p = _write(tmp_path, CSV_2024)
    tr = load_azure_trace(p, time_scale=0.5)
    np.testing.assert_allclose(tr.times_s, [0.0, 0.5, 1.75])  # sorted by time, then x0.5
    assert tr.input_len.tolist() == [200, 100, 300]
    w = load_azure_trace(p, start_s=0.5, duration_s=3.1)
    assert load_azure_trace(p, start_s=0.5, duration_s=3.0).input_len.tolist() == [100]  # window is [start, start+duration)
    assert w.input_len.tolist() == [100, 300] and w.times_s[0] == 0.0
    assert load_azure_trace(p, max_requests=2).input_len.tolist() == [200, 100]
    assert tr.mean_rate_rps == pytest.approx(2 / 1.75)


@pytest.mark.parametrize(
    ("text", "kwargs", "match"),
    [
        ("a,b\n1,2\n", {}, "missing column"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,1,2\n", {}, "TIMESTAMP"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n2024-05-10 00:00:00,x,2\n", {}, "ContextTokens"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n", {}, "no requests"),
        (CSV_2024, {"start_s": 100.0}, "no request"),
        (CSV_2024, {"time_scale": 0.0}, "--time-scale"),
    ],
)
def test_bad_inputs(tmp_path: Path, text: str, kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_azure_trace(_write(tmp_path, text), **kwargs)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--trace: file not found"):
        load_azure_trace(tmp_path / "nope.csv")
