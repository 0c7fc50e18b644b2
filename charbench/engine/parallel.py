"""Parallel layouts TP x SPP x KVP: parsing ``--parallel`` and the process groups, in one place.

Rank layout (Vajra's): ``rank = spp_i * TP * KVP + kvp_i * TP + tp_i`` -- TP innermost (the
ranks that all-reduce every layer are neighbours), the pipeline outermost. Example::

    layout = Layout.parse("tp=2xkvp=2")      # or "1x1x1" (tp x spp x kvp), "kvp=2", "spp=2"
    groups = ParallelGroups.init(layout, rank)   # after dist.init_process_group
    groups.tp_group, groups.kvp_group, groups.next_stage_rank
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch.distributed as dist

from charbench.errors import ConfigError

_KEYED = re.compile(r"^(tp|spp|kvp)=(\d+)$")


@dataclass(frozen=True)
class Layout:
    """Degrees of tensor, sequence-pipeline and KV-cache parallelism.

    Attributes:
        tp: tensor-parallel ranks per stage and KV shard.
        spp: pipeline stages.
        kvp: KV-cache shards.
    """

    tp: int = 1
    spp: int = 1
    kvp: int = 1

    @classmethod
    def parse(cls, spec: str) -> Layout:
        """``TPxSPPxKVP`` (``1x2x1``) or ``key=n`` parts joined by ``x`` (``tp=2xkvp=2``).

        Raises:
            ConfigError: naming ``--parallel`` and the accepted forms.
        """
        text = spec.strip().lower()
        hint = "use TPxSPPxKVP (e.g. 1x1x2) or key=n parts joined by 'x' (e.g. tp=2xkvp=2)"
        parts = text.split("x") if text else []
        if parts and all(p.isdigit() for p in parts):
            if len(parts) != 3:
                raise ConfigError(f"--parallel {spec!r}: a numeric layout has 3 degrees; {hint}")
            tp, spp, kvp = (int(p) for p in parts)
            return cls._checked(spec, tp, spp, kvp)
        degrees = {"tp": 1, "spp": 1, "kvp": 1}
        seen: set[str] = set()
        for part in parts:
            m = _KEYED.match(part)
            if m is None or m.group(1) in seen:
                raise ConfigError(f"--parallel {spec!r}: cannot read {part!r}; {hint}")
            seen.add(m.group(1))
            degrees[m.group(1)] = int(m.group(2))
        if not seen:
            raise ConfigError(f"--parallel {spec!r}: empty layout; {hint}")
        return cls._checked(spec, degrees["tp"], degrees["spp"], degrees["kvp"])

    @classmethod
    def _checked(cls, spec: str, tp: int, spp: int, kvp: int) -> Layout:
        for name, value in (("tp", tp), ("spp", spp), ("kvp", kvp)):
            if value < 1:
                raise ConfigError(f"--parallel {spec!r}: {name} must be >= 1, got {value}")
        return cls(tp, spp, kvp)

    @property
    def world(self) -> int:
        """Processes needed."""
        return self.tp * self.spp * self.kvp

    @property
    def label(self) -> str:
        """Canonical ``TPxSPPxKVP`` text."""
        return f"{self.tp}x{self.spp}x{self.kvp}"

    def rank_of(self, spp_i: int, kvp_i: int, tp_i: int) -> int:
        """Global rank of a coordinate."""
        return (spp_i * self.kvp + kvp_i) * self.tp + tp_i

    def coords(self, rank: int) -> tuple[int, int, int]:
        """``(spp_i, kvp_i, tp_i)`` of a global rank."""
        return rank // (self.tp * self.kvp), (rank // self.tp) % self.kvp, rank % self.tp

    def stage_layers(self, num_layers: int, stage: int) -> range:
        """Layer indices of pipeline ``stage`` (earlier stages take the remainder)."""
        if self.spp > num_layers:
            raise ConfigError(f"--parallel: spp={self.spp} stages but the model has {num_layers} layers")
        base, extra = divmod(num_layers, self.spp)
        start = stage * base + min(stage, extra)
        return range(start, start + base + (1 if stage < extra else 0))


@dataclass
class ParallelGroups:
    """This rank's process groups (None where the degree is 1).

    Attributes:
        layout: the layout.
        rank: global rank.
        spp_i: pipeline stage; kvp_i: KV shard; tp_i: tensor-parallel rank.
        tp_group: ranks sharing (stage, shard).
        kvp_group: ranks sharing (stage, tp rank).
        prev_stage_rank: global rank sending this rank its activations (None on stage 0).
        next_stage_rank: global rank receiving them (None on the last stage).
        last_stage_root: global rank that broadcasts sampled tokens.
    """

    layout: Layout
    rank: int
    spp_i: int
    kvp_i: int
    tp_i: int
    tp_group: dist.ProcessGroup | None
    kvp_group: dist.ProcessGroup | None
    prev_stage_rank: int | None
    next_stage_rank: int | None
    last_stage_root: int

    @classmethod
    def init(cls, layout: Layout, rank: int) -> ParallelGroups:
        """Create the groups; every rank must call this (``new_group`` is collective)."""
        s, k, t = layout.coords(rank)
        tp_group = kvp_group = None
        if layout.world > 1:
            for si in range(layout.spp):
                for ki in range(layout.kvp):
                    g = dist.new_group([layout.rank_of(si, ki, ti) for ti in range(layout.tp)])
                    if (si, ki) == (s, k):
                        tp_group = g
            for si in range(layout.spp):
                for ti in range(layout.tp):
                    g = dist.new_group([layout.rank_of(si, ki, ti) for ki in range(layout.kvp)])
                    if (si, ti) == (s, t):
                        kvp_group = g
        return cls(
            layout, rank, s, k, t,
            tp_group if layout.tp > 1 else None,
            kvp_group if layout.kvp > 1 else None,
            layout.rank_of(s - 1, k, t) if s > 0 else None,
            layout.rank_of(s + 1, k, t) if s < layout.spp - 1 else None,
            layout.rank_of(layout.spp - 1, 0, 0),
        )
