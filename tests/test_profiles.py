"""The serving profile format (charbench.profiles): write, read back, refuse other files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from charbench.errors import ConfigError
from charbench.profiles import FIELD_DOCS, FORMAT, KEY_FIELDS, PERF_FIELDS, VERSION, load_profile, write_profile


def _entry(rate: float | None, power: float | None) -> dict[str, Any]:
    e: dict[str, Any] = {k: None for k in KEY_FIELDS} | {k: None for k in PERF_FIELDS}
    e |= {"model": "tiny", "tp": 1, "rate_kind": "rate" if rate is not None else "max-throughput", "rate_rps": rate,
          "median_ttft_ms": 12.5, "avg_power_w": power, "energy_per_output_token_j": None, "energy_per_request_j": None,
          "energy_basis": "point"}
    e["provenance"] = {"avg_power_w": "measured:nvml" if power is not None else "not-measured:no meter",
                       "energy_per_output_token_j": "not-measured:no meter", "energy_per_request_j": "not-measured:no meter"}
    return e


@pytest.mark.parametrize("name", ["p.json", "p.csv"])
def test_write_then_load_keeps_entries(tmp_path: Path, name: str) -> None:
    entries = [_entry(4.0, 250.0), _entry(None, None)]
    path = write_profile(entries, tmp_path / name, source_run="run-1")
    assert path == tmp_path / name
    back = load_profile(path)
    assert [(e["rate_kind"], e["rate_rps"], e["avg_power_w"], e["median_ttft_ms"]) for e in back] == [
        ("rate", 4.0, 250.0, 12.5), ("max-throughput", None, None, 12.5)]
    assert back[1]["provenance"]["avg_power_w"] == "not-measured:no meter"


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
    with pytest.raises(ConfigError, match=rf"^{bad}: profile version 99 is not supported \(this charbench reads version {VERSION}\)$"):
        load_profile(bad)
    csv = tmp_path / "bad.csv"
    csv.write_text("model,tp\ntiny,1\n")
    with pytest.raises(ConfigError, match=rf"^{csv}: not a {FORMAT} CSV \(column 'format' missing or different\)$"):
        load_profile(csv)
