"""DroidSpeak profiler (groups, Pareto frontier, choice), LongBench scorers, transfer timeline."""

from __future__ import annotations

import random

import pytest

from charbench.errors import ConfigError
from charbench.workloads.cache_reuse.metrics import code_sim, normalize_answer, qa_f1, rouge_l, score
from charbench.workloads.cache_reuse.profiler import (
    ProfilePoint, choose_group, contiguous_groups, pareto_frontier, profile_groups,
)
from charbench.workloads.cache_reuse.timeline import TOY, TimelineInputs, link_seconds, timeline


def test_contiguous_groups_count_and_pairs() -> None:
    groups = contiguous_groups(6)
    assert len(groups) == 21 and groups[0] == (0, 0) and groups[-1] == (5, 5)
    assert contiguous_groups(5, 2) == [(0, 1), (0, 3), (0, 4), (2, 3), (2, 4), (4, 4)]
    with pytest.raises(ConfigError, match=r"--group-size: must be in \[1, 4\] \(layers\), got 5"):
        contiguous_groups(4, 5)


def test_frontier_is_monotone_and_picks_best_per_count() -> None:
    rng = random.Random(3)
    groups = contiguous_groups(8)
    points = profile_groups(groups, lambda g: round(rng.uniform(0, 100), 1))
    front = pareto_frontier(points)
    assert [p.layers for p in front] == sorted({p.layers for p in front})
    assert all(b.quality > a.quality for a, b in zip(front, front[1:]))
    for p in front:  # nothing cheaper or as cheap is better
        assert all(q.quality <= p.quality for q in points if q.layers <= p.layers)
    pts = [ProfilePoint((0, 0), 50.0), ProfilePoint((3, 3), 70.0), ProfilePoint((1, 2), 60.0),
           ProfilePoint((2, 3), 80.0), ProfilePoint((0, 3), 79.0)]
    assert [p.group for p in pareto_frontier(pts)] == [(3, 3), (2, 3)]


def test_choose_group_within_tolerance() -> None:
    front = [ProfilePoint((3, 3), 70.0), ProfilePoint((2, 3), 89.5), ProfilePoint((0, 3), 92.0)]
    assert choose_group(front, 90.0, 0.01).group == (2, 3)  # 89.5 >= 89.1
    assert choose_group(front, 95.0, 0.01) is None
    assert choose_group(front, 90.0, 0.25).group == (3, 3)
    with pytest.raises(ConfigError, match=r"--tolerance: must be in \[0, 1\), got 1.0"):
        choose_group(front, 90.0, 1.0)


def test_longbench_scorers() -> None:
    assert normalize_answer("The  Eiffel, Tower!") == "eiffel tower"
    assert qa_f1("the eiffel tower", "Eiffel Tower") == 1.0
    assert qa_f1("eiffel", "eiffel tower") == pytest.approx(2 / 3)
    assert qa_f1("paris", "eiffel tower") == 0.0
    assert rouge_l("a b c d", "a c d e") == pytest.approx(0.75)
    assert code_sim("# comment\nreturn x + 1\n", "return x + 2") == pytest.approx(22 / 24)
    assert score("v3", ["v1", "v3"], "f1") == 1.0
    with pytest.raises(ValueError, match="--metric: unknown metric 'bleu'; valid: f1, rouge_l, edit_sim"):
        score("a", ["a"], "bleu")


def test_timeline_reproduces_the_paper_toy() -> None:
    assert timeline(TOY) == {"load_all_first": 47.0, "reused_only": 30.0, "pipelined": 17.0}
    no_recompute = timeline(TimelineInputs(4, 0, 2.0, 3.0, 0.0))
    assert no_recompute == {"load_all_first": 8.0, "reused_only": 8.0, "pipelined": 8.0}
    assert link_seconds(1.25e9, 10.0) == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="--link-gbps: must be > 0, got 0"):
        link_seconds(1, 0)
    with pytest.raises(ConfigError, match=r"recomputed layers: must be in \[0, 4\], got 5"):
        timeline(TimelineInputs(4, 5, 1.0, 1.0, 1.0))
