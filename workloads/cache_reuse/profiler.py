"""DroidSpeak's offline profile: contiguous layer groups, the Pareto frontier, the chosen group.

Every contiguous group ``[a, b]`` (O(L^2); ``group_size=2`` aligns both ends to pairs of
layers, as the paper's evaluation does) is scored on a profiling set; the frontier keeps,
for each number of recomputed layers, the best group if it beats every group with fewer
layers, so quality along it strictly rises; the chosen group is the cheapest one within a
tolerance of the receiver's own quality (arXiv 2411.02820 §4.2).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from charbench.errors import ConfigError

Group = tuple[int, int]


def contiguous_groups(num_layers: int, group_size: int = 1) -> list[Group]:
    """All ``[a, b]`` with ``0 <= a <= b < num_layers``; with ``group_size`` g, ``a`` and ``b + 1``
    are multiples of g (the last group may end at the last layer).

    Raises:
        ConfigError: ``group_size`` < 1 or above ``num_layers``.
    """
    if not 1 <= group_size <= num_layers:
        raise ConfigError(f"--group-size: must be in [1, {num_layers}] (layers), got {group_size}")
    cuts = list(range(0, num_layers, group_size)) + [num_layers]
    return [(cuts[i], cuts[j] - 1) for i in range(len(cuts) - 1) for j in range(i + 1, len(cuts))]


@dataclass(frozen=True)
class ProfilePoint:
    """One profiled group.

    Attributes:
        group: ``(a, b)``, the recomputed layers (inclusive).
        quality: score on the profiling set (0..100).
    """

    group: Group

    quality: float

    @property
    def layers(self) -> int:
        """Recomputed layers."""
        return self.group[1] - self.group[0] + 1


def profile_groups(groups: list[Group], quality_of: Callable[[Group], float]) -> list[ProfilePoint]:
    """Score every group with ``quality_of``."""
    return [ProfilePoint(g, float(quality_of(g))) for g in groups]


def pareto_frontier(points: list[ProfilePoint]) -> list[ProfilePoint]:
    """Best group per recomputed-layer count, kept only when it beats all cheaper ones.

    Ties on quality go to the earlier group (lower ``a``).
    """
    best: dict[int, ProfilePoint] = {}
    for p in sorted(points, key=lambda p: (p.layers, p.group)):
        if p.layers not in best or p.quality > best[p.layers].quality:
            best[p.layers] = p
    frontier: list[ProfilePoint] = []
    for n in sorted(best):
        if not frontier or best[n].quality > frontier[-1].quality:
            frontier.append(best[n])
    return frontier


def choose_group(frontier: list[ProfilePoint], receiver_quality: float, tolerance: float) -> ProfilePoint | None:
    """The cheapest frontier point with ``quality >= (1 - tolerance) * receiver_quality``.

    Returns:
        That point, or None when no group reaches it (then recompute everything).

    Raises:
        ConfigError: ``tolerance`` outside [0, 1).
    """
    if not 0.0 <= tolerance < 1.0:
        raise ConfigError(f"--tolerance: must be in [0, 1), got {tolerance}")
    target = (1.0 - tolerance) * receiver_quality
    return next((p for p in frontier if p.quality >= target), None)
