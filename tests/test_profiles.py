"""The serving profile format (charbench.profiles): write, read back, refuse other files."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from charbench.errors import ConfigError
from charbench.profiles import FIELD_DOCS, FORMAT, KEY_FIELDS, PERF_FIELDS, VERSION, load_profile, write_profile


def _entry(rate: float | None, power: float | None) -> dict[str, Any]:
    e: dict[str, Any] = {k: None for k in KEY_FIELDS} | {k: None for k in PERF_FIELDS}
    e |= {"model": "tiny", "tp": 1, "load_kind": "rate", "request_rate_rps": "inf" if rate is None else rate,
          "median_ttft_ms": 12.5, "mean_power_w": power, "energy_per_output_token_j": None, "energy_per_request_j": None,
          "energy_basis": "point"}
    e["provenance"] = {"mean_power_w": "measured:nvml" if power is not None else "not-measured:no meter",
                       "energy_per_output_token_j": "not-measured:no meter", "energy_per_request_j": "not-measured:no meter"}
    return e


@pytest.mark.parametrize("name", ["p.json", "p.csv"])
def test_write_then_load_keeps_entries(tmp_path: Path, name: str) -> None:
    entries = [_entry(4.0, 250.0), _entry(None, None)]
    path = write_profile(entries, tmp_path / name, source_run="run-1")
    assert path == tmp_path / name
    back = load_profile(path)
    # max throughput is the knob's value inf (JSON holds "inf"), read back as the float
    assert [(e["load_kind"], e["request_rate_rps"], e["mean_power_w"], e["median_ttft_ms"]) for e in back] == [
        ("rate", 4.0, 250.0, 12.5), ("rate", math.inf, None, 12.5)]
    assert back[1]["provenance"]["mean_power_w"] == "not-measured:no meter"


def test_json_header(tmp_path: Path) -> None:
    obj = json.loads(write_profile([_entry(1.0, None)], tmp_path / "p.json", source_run="run-1").read_text())
    assert (obj["format"], obj["version"], obj["source_run"], obj["fields"]) == (FORMAT, VERSION, "run-1", FIELD_DOCS)


def test_nothing_to_write(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^--export-profile: the run has no completed point to export$"):
        write_profile([], tmp_path / "p.json")


def test_load_refuses_other_files(tmp_path: Path) -> None:
    missing = tmp_path / "none.json"
    with pytest.raises(ConfigError, match=f"^profile file not found: {missing}; write one with the --export-profile option of a serving sweep$"):
        load_profile(missing)
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ConfigError, match=rf"^{bad}: not valid JSON \("):
        load_profile(bad)
    bad.write_text(json.dumps({"format": "other", "version": VERSION}))
    with pytest.raises(ConfigError, match=rf"^{bad}: format 'other' is not '{FORMAT}'$"):
        load_profile(bad)
    bad.write_text(json.dumps({"format": FORMAT, "version": 99}))
    with pytest.raises(ConfigError, match=rf"^{bad}: profile version 99 is not supported \(this charbench reads versions 1, 2\)$"):
        load_profile(bad)
    csv = tmp_path / "bad.csv"
    csv.write_text("model,tp\ntiny,1\n")
    with pytest.raises(ConfigError, match=rf"^{csv}: not a {FORMAT} CSV \(column 'format' missing or different\)$"):
        load_profile(csv)


def test_version_1_files_read_under_todays_names(tmp_path: Path) -> None:
    old = {"model": "tiny", "rate_kind": "max-throughput", "rate_rps": None, "avg_power_w": 300.0, "error_rate": 0.0,
           "slo_attainment": 1.0, "provenance": {"avg_power_w": "measured:nvml"}}
    rate = {**old, "rate_kind": "rate", "rate_rps": 2.0}
    path = tmp_path / "v1.json"
    path.write_text(json.dumps({"format": FORMAT, "version": 1, "entries": [old, rate]}))
    back = load_profile(path)
    assert back[0] == {"model": "tiny", "load_kind": "rate", "request_rate_rps": math.inf, "mean_power_w": 300.0, "error_frac": 0.0,
                       "slo_attainment_frac": 1.0, "provenance": {"mean_power_w": "measured:nvml"}}
    assert (back[1]["load_kind"], back[1]["request_rate_rps"]) == ("rate", 2.0)
