"""Request-length distributions, Azure-shaped classes, context fitting."""

from __future__ import annotations

import numpy as np
import pytest

from charbench.errors import ConfigError
from charbench.workloads.serving.lengths import LengthSpec, azure_classes, fit_to_context, length_class, sample_lengths


def test_fixed() -> None:
    i, o = sample_lengths(LengthSpec("fixed", 100, 7), 5, seed=0)
    assert i.tolist() == [100] * 5 and o.tolist() == [7] * 5


def test_uniform_bounds_and_seed() -> None:
    spec = LengthSpec("uniform", 100, 50, range_ratio=0.2)
    i, o = sample_lengths(spec, 5000, seed=3)
    assert i.min() >= 80 and i.max() <= 120 and o.min() >= 40 and o.max() <= 60
    assert abs(i.mean() - 100) < 1.0
    i2, _ = sample_lengths(spec, 5000, seed=3)
    np.testing.assert_array_equal(i, i2)


def test_normal_is_at_least_one() -> None:
    i, _ = sample_lengths(LengthSpec("normal", 10, 10, std_ratio=2.0), 2000, seed=0)
    assert i.min() >= 1


def test_zipf_support_and_shape() -> None:
    i, _ = sample_lengths(LengthSpec("zipf", 50, 10, zipf_alpha=1.2), 20000, seed=0)
    assert i.min() >= 1 and i.max() <= 100
    # P(1) / P(2) = 2^1.2
    ratio = (i == 1).sum() / (i == 2).sum()
    assert ratio == pytest.approx(2 ** 1.2, rel=0.1)


@pytest.mark.parametrize("cls", ["azure-conv", "azure-code"])
def test_azure_classes_match_published_medians(cls: str) -> None:
    c = azure_classes()["classes"][cls]
    assert "Splitwise" in azure_classes()["source"]
    assert c["sigma_provenance"].startswith("assumed")
    i, o = sample_lengths(LengthSpec(cls), 20001, seed=1)
    assert np.median(i) == pytest.approx(c["input_median_tokens"], rel=0.05)
    assert np.median(o) == pytest.approx(c["output_median_tokens"], rel=0.06)
    i2, _ = sample_lengths(LengthSpec(cls, scale=0.1), 20001, seed=1)
    assert np.median(i2) == pytest.approx(c["input_median_tokens"] * 0.1, rel=0.06)
    assert length_class(LengthSpec(cls), 1, 1) == cls


def test_published_medians_values() -> None:
    c = azure_classes()["classes"]
    assert (c["azure-code"]["input_median_tokens"], c["azure-code"]["output_median_tokens"]) == (1500, 13)
    assert (c["azure-conv"]["input_median_tokens"], c["azure-conv"]["output_median_tokens"]) == (1020, 129)


def test_fit_to_context() -> None:
    i, o, n = fit_to_context(np.array([10, 100, 5]), np.array([5, 50, 200]), 64)
    assert n == 2
    assert (i + o).max() <= 64 and i.min() >= 1 and o.min() >= 1
    assert o[1] == 50 and i[1] == 14  # output kept, input cut
    assert i[2] == 1 and o[2] == 63
    assert fit_to_context(np.array([3]), np.array([3]), None)[2] == 0


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        (LengthSpec("lognormal"), "--length-dist"),
        (LengthSpec("fixed", 0, 5), "--input-len"),
        (LengthSpec("uniform", 5, 5, range_ratio=1.5), "--range-ratio"),
        (LengthSpec("zipf", 5, 5, zipf_alpha=0), "--zipf-alpha"),
    ],
)
def test_bad_specs(spec: LengthSpec, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        sample_lengths(spec, 3)
