"""Chunk-size policies for chunked prefill.

The scheduler asks a policy how many of a sequence's not-yet-computed tokens to put into
this iteration's batch, given the token budget left after the decodes (Sarathi-Serve).
A policy is anything with ``chunk_size(seq, budget_left) -> int``; new policies (adaptive
ones for the long-context study) register with :func:`register_chunk_policy`::

    from charbench.engine.chunking import make_chunk_policy
    policy = make_chunk_policy("fixed:64", max_num_batched_tokens=512)
    n = policy.chunk_size(seq, budget_left=300)   # <= 64, <= 300, <= tokens left

Policy specs are ``name`` or ``name:arg`` strings (``EngineConfig.chunk_policy``):
``fixed`` uses the whole budget, ``fixed:N`` caps every chunk at N tokens.
"""

from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

from charbench.errors import ConfigError


class ChunkableSeq(Protocol):
    """What a policy may read from a sequence (``scheduler.Sequence`` provides it)."""

    @property
    def num_tokens(self) -> int:
        """Prompt + output tokens."""
        ...

    @property
    def num_computed_tokens(self) -> int:
        """Tokens already in the KV cache."""
        ...

    @property
    def num_uncomputed_tokens(self) -> int:
        """Tokens still to run through the model (the prefill left)."""
        ...


@runtime_checkable
class ChunkPolicy(Protocol):
    """Decides the prefill chunk of one sequence in one iteration."""

    def chunk_size(self, seq: ChunkableSeq, budget_left: int) -> int:
        """Tokens of ``seq`` to schedule now.

        Args:
            seq: the sequence being prefilled (or recomputed after preemption).
            budget_left: tokens left in this iteration's budget (> 0).

        Returns:
            A count in ``[0, min(budget_left, seq.num_uncomputed_tokens)]``; 0 skips the
            sequence this iteration. The scheduler clamps out-of-range answers.
        """
        ...


class FixedChunkPolicy:
    """Chunks of at most ``max_chunk_tokens`` (None: only the budget limits the chunk)."""

    def __init__(self, max_chunk_tokens: int | None = None) -> None:
        """Create the policy.

        Args:
            max_chunk_tokens: cap per chunk; None means the iteration budget is the cap.
        """
        if max_chunk_tokens is not None and max_chunk_tokens < 1:
            raise ConfigError(
                f"chunk_policy: fixed chunk size must be >= 1, got {max_chunk_tokens}; "
                "use e.g. 'fixed:256'"
            )
        self.max_chunk_tokens = max_chunk_tokens

    def chunk_size(self, seq: ChunkableSeq, budget_left: int) -> int:
        """Return min(cap, budget_left, tokens left)."""
        n = min(budget_left, seq.num_uncomputed_tokens)
        if self.max_chunk_tokens is not None:
            n = min(n, self.max_chunk_tokens)
        return max(n, 0)

    def __repr__(self) -> str:
        return f"FixedChunkPolicy(max_chunk_tokens={self.max_chunk_tokens})"


# name -> factory(arg string or None, max_num_batched_tokens) -> policy
_FACTORIES: dict[str, Callable[[str | None, int], ChunkPolicy]] = {}


def register_chunk_policy(name: str, factory: Callable[[str | None, int], ChunkPolicy]) -> None:
    """Register a policy factory under ``name``.

    Args:
        name: the spec name (the part before ``:``).
        factory: called with the spec argument (text after ``:`` or None) and the
            engine's ``max_num_batched_tokens``; returns the policy.
    """
    _FACTORIES[name] = factory


def _fixed_factory(arg: str | None, max_num_batched_tokens: int) -> ChunkPolicy:
    if arg is None or arg == "":
        return FixedChunkPolicy(None)
    try:
        n = int(arg)
    except ValueError:
        raise ConfigError(
            f"chunk_policy: 'fixed:{arg}' needs an integer chunk size, e.g. 'fixed:256'"
        ) from None
    return FixedChunkPolicy(n)


register_chunk_policy("fixed", _fixed_factory)


def available_chunk_policies() -> list[str]:
    """Names accepted by :func:`make_chunk_policy`."""
    return sorted(_FACTORIES)


def make_chunk_policy(spec: str, max_num_batched_tokens: int) -> ChunkPolicy:
    """Build a policy from a ``name[:arg]`` spec.

    Args:
        spec: e.g. ``fixed`` or ``fixed:128``.
        max_num_batched_tokens: the engine's per-iteration token budget.

    Raises:
        ConfigError: unknown name or bad argument.
    """
    name, _, arg = spec.partition(":")
    factory = _FACTORIES.get(name.strip())
    if factory is None:
        raise ConfigError(
            f"chunk_policy: unknown policy {spec!r}; valid: {', '.join(available_chunk_policies())}"
        )
    return factory(arg.strip() or None, max_num_batched_tokens)
