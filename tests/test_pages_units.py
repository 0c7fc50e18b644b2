"""One unit per quantity on every page, one number format."""

from __future__ import annotations

import math

from charbench.pages import display_unit, fmt_number, metric_label


def test_display_unit_picks_the_smaller_unit_for_small_values() -> None:
    assert display_unit("throughput_tflop_s", [0.004, 0.02]) == ("GFLOP/s", 1e3)  # a CPU
    assert display_unit("throughput_tflop_s", [312.0]) == ("TFLOP/s", 1.0)  # a GPU
    assert display_unit("energy_per_gemm_j", [0.002]) == ("mJ", 1e3)
    assert display_unit("p99_ttft_ms", [1200.0]) == ("ms", 1.0)
    assert display_unit("output_throughput_tok_s") == ("tok/s", 1.0)
    assert display_unit("dtype") == ("", 1.0)  # not a metric
    assert display_unit("throughput_tflop_s", [None, math.nan, math.inf]) == ("TFLOP/s", 1.0)  # no finite value: the name's unit


def test_metric_label_and_number_format() -> None:
    assert metric_label("p99_ttft_ms") == "p99 ttft (ms)"
    assert metric_label("throughput_tflop_s", [0.01]) == "throughput (GFLOP/s)"
    assert metric_label("experiment") == "experiment"
    assert [fmt_number(v) for v in (1148.5, 0.0031415, 3, None, math.nan, math.inf, "fp32")] == ["1148", "0.003142", "3", "null", "null", "inf", "fp32"]
