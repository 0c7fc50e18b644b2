"""Transfer timeline of a DroidSpeak prefill (arXiv 2411.02820 Fig 13).

Three ways to get a receiver's cache ready for the query, for a recompute group of ``m``
of ``L`` layers, each layer's K/V taking ``kv_layer_s`` on the link, the E-cache ``e_s``
and the recompute ``recompute_s``:

* ``load_all_first``: every layer's K/V and the E-cache arrive, then recompute:
  ``L * kv + e + r``;
* ``reused_only``: only the reused layers' K/V are sent, then recompute: ``(L - m) * kv + e + r``;
* ``pipelined``: the E-cache first, then recompute while the reused K/V stream:
  ``e + max(r, (L - m) * kv)``.

:data:`TOY` gives the figure's totals 47 -> 30 -> 17 (time units). The figure's own
inputs are not in our reference; these are ours, chosen to reproduce its totals.
"""

from __future__ import annotations

from dataclasses import dataclass

from charbench.errors import ConfigError


@dataclass(frozen=True)
class TimelineInputs:
    """What the timeline model needs (any one time unit).

    Attributes:
        num_layers: L.
        recomputed_layers: m.
        kv_layer_s: link time of one layer's K/V.
        e_s: link time of the E-cache at the transition layer.
        recompute_s: time to recompute the group.
    """

    num_layers: int
    recomputed_layers: int
    kv_layer_s: float
    e_s: float
    recompute_s: float


TOY = TimelineInputs(num_layers=30, recomputed_layers=17, kv_layer_s=1.0, e_s=2.0, recompute_s=15.0)
"""Inputs that give Fig 13's toy totals (47 / 30 / 17)."""


def link_seconds(nbytes: float, bandwidth_gbps: float) -> float:
    """Seconds to move ``nbytes`` over a link of ``bandwidth_gbps`` gigabits per second.

    Raises:
        ConfigError: a bandwidth that is not > 0.
    """
    if not bandwidth_gbps > 0:
        raise ConfigError(f"--link-gbps: must be > 0, got {bandwidth_gbps}")
    return nbytes * 8 / (bandwidth_gbps * 1e9)


def timeline(inp: TimelineInputs) -> dict[str, float]:
    """Time to a ready cache under each strategy (keys ``load_all_first``, ``reused_only``, ``pipelined``).

    Raises:
        ConfigError: ``recomputed_layers`` outside [0, num_layers].
    """
    L, m = inp.num_layers, inp.recomputed_layers
    if not 0 <= m <= L:
        raise ConfigError(f"recomputed layers: must be in [0, {L}], got {m}")
    reused = (L - m) * inp.kv_layer_s
    e = inp.e_s if m else 0.0  # no recompute: no E-cache to send
    return {
        "load_all_first": L * inp.kv_layer_s + e + inp.recompute_s,
        "reused_only": reused + e + inp.recompute_s,
        "pipelined": e + max(inp.recompute_s, reused),
    }
