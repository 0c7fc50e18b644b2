"""serve-sweep's report sections: the figures' data and the tables' values, measured and not measured."""

from __future__ import annotations

import base64
import json
import math
import re
from typing import Any

import numpy as np

from charbench.workloads.serving.figures import energy_knob_section, summary_section


def _array(v: Any) -> list:
    """A plotly JSON array as a list (plotly 6 writes numeric arrays as ``{"dtype", "bdata"}``)."""
    if isinstance(v, dict) and "bdata" in v:
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"]).tolist()
    return list(v)


def _figure(html: str) -> dict:
    (payload,) = re.findall(r"var f=(\{.*?\});Plotly", html)
    return json.loads(payload)


def _rec(mns: int, rate: float, steady_j: float | None, point_j: float | None, reason: str = "") -> dict[str, Any]:
    reasons = {} if steady_j is not None else {"steady_energy_per_output_token_j": reason}
    if point_j is None:
        reasons["energy_per_output_token_j"] = reason
    return {"max_num_seqs": mns, "request_rate_rps": rate, "offered_load": "all at once" if math.isinf(rate) else f"{rate:.4g} req/s",
            "mode_step": "grid", "load_kind": "rate", "output_throughput_tok_s": 100.0 * mns, "request_throughput_rps": 2.0 * mns,
            "median_ttft_ms": 10.0 * mns, "p99_ttft_ms": 20.0 * mns, "steady_energy_per_output_token_j": steady_j,
            "energy_per_output_token_j": point_j, "mean_steady_power_w": 300.0 if steady_j is not None else None,
            "mean_power_w": 280.0 if point_j is not None else None, "null_reasons": json.dumps(reasons)}


def test_measured_energy_per_token_is_plotted_per_knob_value() -> None:
    """Measured (as with NVML counters): the steady window's J/token against max_num_seqs, then the throughput axis for inf."""
    recs = [_rec(2, math.inf, 0.5, 0.6), _rec(4, math.inf, 0.3, 0.4)]
    fig = _figure(energy_knob_section(recs).html)
    assert [a["text"] for a in fig["layout"]["annotations"]] == ["J/output token vs max_num_seqs", "J/output token vs output_throughput_tok_s"]
    by_axis = {(t["name"], t.get("xaxis", "x")): (_array(t["x"]), _array(t["y"])) for t in fig["data"]}
    assert by_axis[("all at once (steady)", "x")] == ([2, 4], [0.5, 0.3])
    assert by_axis[("all at once (steady)", "x2")] == ([200.0, 400.0], [0.5, 0.3])


def test_not_measured_energy_says_why_and_plots_nothing() -> None:
    """A CPU without RAPL: J/token is null everywhere, the section names the reason instead of a figure."""
    why = "no energy meter usable for this device (see `charbench env`, meters)"
    sec = energy_knob_section([_rec(2, 40.0, None, None, why), _rec(4, 40.0, None, None, why)])
    assert "Plotly" not in sec.html
    assert f"steady window: {why}; whole load: {why}" in sec.html
    assert "Knobs swept: max_num_seqs." in sec.html


def test_summary_table_values() -> None:
    html = summary_section([_rec(2, math.inf, 0.5, 0.6), _rec(4, 40.0, None, 0.4, "no steady state")]).html
    rows = re.findall(r"<tr>(.*?)</tr>", html, re.S)
    cells = [re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", r, re.S) for r in rows]
    head, first, second = cells[0], cells[1], cells[2]
    col = {h: i for i, h in enumerate(head)}
    assert (first[col["req/s"]], first[col["median TTFT ms"]], first[col["J/out tok"]], first[col["J basis"]], first[col["avg power W"]]) == (
        "4", "20", "0.5", "steady", "300")
    assert (second[col["J/out tok"]], second[col["J basis"]], second[col["avg power W"]]) == ("0.4", "whole load", "280")
    assert first[col["median TPOT ms"]] == "null"  # not in the record: shown as null, never 0
