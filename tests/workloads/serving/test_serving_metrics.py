"""Metrics arithmetic on hand-made records: vLLM definitions, goodput, steady window."""

from __future__ import annotations

import numpy as np
import pytest

from charbench.record import Record

from charbench.workloads.serving.metrics import (
    ClientRecord,
    Slo,
    SteadyTracker,
    compute_metrics,
    energy_metrics,
    max_in_flight_count,
    steady_window_from_records,
    tokens_in_window,
)


def rec(i: int, send: float, tokens: list[float], out: int | None = None, error: str | None = None, prompt: int = 10) -> ClientRecord:
    r = ClientRecord(index=i, request_id=f"r{i}", input_len=prompt, expected_output_tokens=out or len(tokens))
    r.send_s = send
    r.token_times_s = list(tokens)
    r.first_token_s = tokens[0] if tokens else None
    r.end_s = tokens[-1] if tokens else send + 0.5
    r.output_tokens = len(tokens) if out is None else out
    r.prompt_tokens = prompt
    r.error = error
    return r


def test_vllm_definitions() -> None:
    a = rec(0, 0.0, [0.1, 0.2, 0.4])  # ttft 100, e2el 400, tpot 150, itl [100, 200]
    b = rec(1, 1.0, [1.3])             # one token: no tpot, no itl
    c = rec(2, 2.0, [], error="HTTP 500: boom")
    m = compute_metrics([a, b, c], duration_s=2.0, slo=Slo(ttft_ms=200))
    assert m["completed_count"] == 2 and m["error_count"] == 1 and m["error_frac"] == pytest.approx(1 / 3)
    assert m["mean_ttft_ms"] == pytest.approx(200.0)  # (100 + 300) / 2
    assert m["median_ttft_ms"] == pytest.approx(200.0)
    assert m["std_ttft_ms"] == pytest.approx(100.0)  # population std, as numpy/vLLM
    assert m["p99_ttft_ms"] == pytest.approx(np.percentile([100, 300], 99))
    assert m["mean_tpot_ms"] == pytest.approx(150.0) and m["p90_tpot_ms"] == pytest.approx(150.0)
    assert m["mean_itl_ms"] == pytest.approx(150.0) and m["median_itl_ms"] == pytest.approx(150.0)
    assert m["mean_e2el_ms"] == pytest.approx(350.0)
    assert m["total_output_tokens"] == 4 and m["total_input_tokens"] == 20
    assert m["request_throughput_rps"] == pytest.approx(1.0)
    assert m["output_throughput_tok_s"] == pytest.approx(2.0)
    assert m["total_token_throughput_tok_s"] == pytest.approx(12.0)
    # goodput: a meets ttft<=200 (100), b does not (300), c failed
    assert m["good_request_count"] == 1 and m["slo_attainment_frac"] == pytest.approx(1 / 3)
    assert m["request_goodput_rps"] == pytest.approx(0.5)


def test_goodput_requires_every_slo_and_single_token_passes_tpot() -> None:
    a = rec(0, 0.0, [0.1, 0.2, 0.4])
    b = rec(1, 0.0, [0.05])
    m = compute_metrics([a, b], duration_s=1.0, slo=Slo(ttft_ms=150, tpot_ms=100))
    assert m["good_request_count"] == 1  # a misses tpot (150 > 100); b has no tpot
    m = compute_metrics([a, b], duration_s=1.0, slo=Slo(ttft_ms=150, tpot_ms=100, e2el_ms=40))
    assert m["good_request_count"] == 0


def test_no_slo_and_no_success_are_null_with_reasons() -> None:
    m = compute_metrics([rec(0, 0.0, [], error="x")], slo=None)
    assert m["slo_attainment_frac"] is None and "--slo" in m.reasons["slo_attainment_frac"]
    assert m["mean_ttft_ms"] is None and m.reasons["mean_ttft_ms"] == "no successful request"
    assert m["completed_count"] == 0


def test_default_duration_and_peak_concurrency() -> None:
    rs = [rec(0, 0.0, [0.5, 1.0]), rec(1, 0.2, [0.6, 0.7]), rec(2, 2.0, [2.5])]
    m = compute_metrics(rs)
    assert m["duration_s"] == pytest.approx(2.5)
    assert max_in_flight_count(rs) == 2


def test_steady_window_full_batch_then_drain() -> None:
    # max_num_seqs = 2, 4 requests; first tokens at 1, 2, 3, 4 s, ends at 5, 6, 7, 8 s
    rs = [rec(i, 0.0, [1.0 + i, 5.0 + i]) for i in range(4)]
    tr = steady_window_from_records(rs, max_num_seqs=2)
    assert tr.t_open == 2.0  # two requests decoding at once
    assert tr.t_close == 7.0  # after the 3rd end only 1 < 2 remains
    assert tr.reason_if_none() is None
    assert tokens_in_window(rs, tr.t_open, tr.t_close) == 6  # tokens at 2,3,4 (first) and 5,6,7 (last)


def test_steady_window_never_forms_under_low_load() -> None:
    rs = [rec(i, 10.0 * i, [10.0 * i + 1, 10.0 * i + 2]) for i in range(5)]
    tr = steady_window_from_records(rs, max_num_seqs=2)
    assert tr.t_open is None and "never filled" in (tr.reason_if_none() or "")
    assert "at most 1" in (tr.reason_if_none() or "")
    tr2 = steady_window_from_records(rs[:1], max_num_seqs=4)
    assert "only 1 requests" in (tr2.reason_if_none() or "")


def test_live_tracker_callbacks() -> None:
    seen: list[tuple[str, float]] = []
    tr = SteadyTracker(3, 2, on_open=lambda t: seen.append(("open", t)), on_close=lambda t: seen.append(("close", t)))
    tr.first_token(1.0)
    tr.first_token(2.0)
    tr.finished(3.0, True)   # 2 remain: still steady
    tr.finished(4.0, True)   # 1 remains -> close
    tr.first_token(5.0)
    tr.finished(6.0, True)
    assert seen == [("open", 2.0), ("close", 4.0)]


def _energy(energy: float | None, net: float | None, completed: int, tokens: int) -> Record:
    rec = Record().update({"completed_count": completed, "total_output_tokens": tokens})
    rec.set("energy_j", energy, "nvml-energy-counter", reason="no meter")
    rec.set("energy_net_j", net, "nvml-energy-counter (minus idle baseline)", reason="no idle baseline")
    return energy_metrics(rec, "total_output_tokens", "completed_count")


def test_energy_metrics_never_divide_by_zero() -> None:
    e = _energy(100.0, 60.0, completed=4, tokens=50)
    assert e["energy_per_request_j"] == 25.0 and e["energy_per_output_token_j"] == 2.0 and e["output_per_energy_tok_j"] == 0.5
    assert (e["energy_net_per_request_j"], e["energy_net_per_output_token_j"], e["output_per_energy_net_tok_j"]) == (15.0, 1.2, 50 / 60)
    # derived values name their source's meter and how they were derived
    assert e.provenance["energy_per_output_token_j"] == "nvml-energy-counter (per output token)"
    assert e.provenance["energy_net_per_request_j"] == "nvml-energy-counter (minus idle baseline) (per completed request)"
    z = _energy(None, None, completed=0, tokens=0)
    derived = [k for k in z if k not in ("completed_count", "total_output_tokens")]
    assert all(z[k] is None for k in derived)
    # a missing energy: the energy's reason, not a generic one
    assert {k: z.reasons[k] for k in derived} == {
        "energy_j": "no meter", "energy_net_j": "no idle baseline",
        "energy_per_request_j": "no meter", "energy_per_output_token_j": "no meter", "output_per_energy_tok_j": "no meter",
        "energy_net_per_request_j": "no idle baseline", "energy_net_per_output_token_j": "no idle baseline",
        "output_per_energy_net_tok_j": "no idle baseline"}
    nothing = _energy(10.0, None, completed=0, tokens=0)
    assert nothing["energy_per_request_j"] is None and nothing.reasons["energy_per_request_j"] == "no request completed"
    assert nothing.reasons["energy_per_output_token_j"] == "no output tokens"


def test_unknown_prompt_tokens_are_null_not_zero() -> None:
    """A target without usage and without a tokenizer: input totals are unknown, never 0."""
    a = rec(0, 0.0, [0.1, 0.2])
    b = rec(1, 0.0, [0.1, 0.3])
    b.prompt_tokens = None
    m = compute_metrics([a, b], duration_s=1.0)
    assert m["total_input_tokens"] is None and m["total_token_throughput_tok_s"] is None
    assert "prompt tokens unknown for 1 of 2" in m.reasons["total_input_tokens"]
    assert "prompt tokens unknown" in m.reasons["total_token_throughput_tok_s"]
    assert m["output_throughput_tok_s"] == pytest.approx(4.0)  # output counts stay measured
