"""Arrival schedules: exact values with seeds, gamma rescaling, ramp-up, lateness."""

from __future__ import annotations

import math

import numpy as np
import pytest

from charbench.errors import ConfigError
from charbench.workloads.serving.arrivals import arrival_times, lateness_stats_ms, ramp_inverse


def test_poisson_exact_with_seed_and_rescaled() -> None:
    n, rate = 50, 4.0
    t = arrival_times(n, rate, "poisson", seed=7)
    gaps = np.random.default_rng(7).exponential(1.0, size=n)
    u = np.cumsum(gaps)
    expected = u * (n / u[-1]) / rate
    np.testing.assert_allclose(t, expected, rtol=0, atol=1e-12)
    assert t[-1] == pytest.approx(n / rate)  # N requests span N/rate (vLLM)
    assert np.all(np.diff(t) >= 0)
    # same seed -> same schedule; another seed -> another one
    np.testing.assert_array_equal(t, arrival_times(n, rate, "poisson", seed=7))
    assert not np.allclose(t, arrival_times(n, rate, "poisson", seed=8))


def test_without_rescale_is_the_raw_process() -> None:
    t = arrival_times(20, 2.0, "poisson", seed=3, rescale=False)
    expected = np.cumsum(np.random.default_rng(3).exponential(1.0, size=20)) / 2.0
    np.testing.assert_allclose(t, expected)


def test_gamma_burstiness_rescaled_to_n_over_rate() -> None:
    n, rate, k = 400, 10.0, 0.25
    t = arrival_times(n, rate, "gamma", burstiness=k, seed=1)
    g = np.random.default_rng(1).gamma(shape=k, scale=1.0 / k, size=n)
    u = np.cumsum(g)
    np.testing.assert_allclose(t, u * (n / u[-1]) / rate)
    assert t[-1] == pytest.approx(n / rate)
    # burstier than Poisson: the coefficient of variation of the gaps is ~ 1/sqrt(k) = 2
    cv = np.std(np.diff(t)) / np.mean(np.diff(t))
    assert 1.5 < cv < 2.6


def test_constant_and_all_at_once() -> None:
    t = arrival_times(5, 2.0, "constant")
    np.testing.assert_allclose(t, [0.5, 1.0, 1.5, 2.0, 2.5])
    np.testing.assert_array_equal(arrival_times(6, math.inf, "poisson", seed=1), np.zeros(6))


def test_linear_ramp_inverts_the_cumulative_rate() -> None:
    r0, r, big_t = 1.0, 9.0, 4.0
    u = np.array([0.0, 0.5, 3.0, (r0 + r) * big_t / 2.0, 25.0, 40.0])
    t = ramp_inverse(u, r, big_t, r0)

    def lam(x: float) -> float:
        if x <= big_t:
            return r0 * x + (r - r0) * x * x / (2 * big_t)
        return (r0 + r) * big_t / 2 + r * (x - big_t)

    for ui, ti in zip(u, t):
        assert lam(ti) == pytest.approx(ui, abs=1e-9)
    # ramp from 0: the first arrivals are sparser than at full rate
    s = arrival_times(200, 20.0, "constant", ramp_up_s=5.0, ramp_start_rps=0.0)
    assert np.all(np.diff(s) > 0)
    assert (s[1] - s[0]) > (s[-1] - s[-2]) * 2
    assert s[-1] - s[-2] == pytest.approx(1 / 20.0)
    # ramping down works too (a < 0)
    d = ramp_inverse(np.array([1.0, 5.0]), 1.0, 4.0, 5.0)
    assert 5.0 * d[0] - 4.0 * d[0] ** 2 / 8.0 == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 0, "rate_rps": 1.0}, "--num-requests"),
        ({"n": 3, "rate_rps": 0.0}, "--request-rate"),
        ({"n": 3, "rate_rps": 1.0, "process": "weibull"}, "--arrival"),
        ({"n": 3, "rate_rps": 1.0, "process": "gamma", "burstiness": 0.0}, "--burstiness"),
        ({"n": 3, "rate_rps": 1.0, "ramp_up_s": -1.0}, "--ramp-up-s"),
    ],
)
def test_bad_arguments_name_the_option(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        arrival_times(**kwargs)


def test_lateness_stats() -> None:
    s = lateness_stats_ms(np.array([0.0, 1.0, 2.0]), np.array([0.001, 1.002, 2.0]))
    assert s["send_lateness_max_ms"] == pytest.approx(2.0)
    assert s["send_lateness_p50_ms"] == pytest.approx(1.0)
    assert lateness_stats_ms(np.array([]), np.array([]))["send_lateness_p99_ms"] is None
