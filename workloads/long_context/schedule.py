"""Chunk schedules of the long prompt, from the engine's chunk policies.

The ranks run a precomputed list of prefill chunks (``GenerateSpec.chunks``). The list is
what the engine's policy chooses iteration by iteration: each iteration carries every
co-batched decode (their KV grows by one token per iteration) plus one chunk of the long
prompt. Adaptive chunking (:class:`~charbench.engine.adaptive_chunking.AdaptiveChunkPolicy`)
depends only on the predictor and the batch's shape, not on measured times, so the schedule
computed ahead is the one it would choose online::

    sched = chunk_schedule("adaptive", 8192, [64] * 8, predictor, tbt_slo_s=0.05, min_chunk=32)
    sched.chunks, sched.over_budget, sched.predicted_s
"""

from __future__ import annotations

from dataclasses import dataclass, field

from charbench.engine.adaptive_chunking import AdaptiveChunkPolicy, BatchTimePredictor, IterationSample
from charbench.engine.chunking import make_chunk_policy
from charbench.errors import ConfigError


@dataclass
class _Seq:
    """The minimum a chunk policy reads (``ChunkableSeq``)."""

    num_tokens: int
    num_computed_tokens: int = 0

    @property
    def num_uncomputed_tokens(self) -> int:
        return self.num_tokens - self.num_computed_tokens


@dataclass
class Schedule:
    """A long prompt's chunks and what the policy saw.

    Attributes:
        chunks: chunk sizes in order (sum = prompt length).
        contexts: KV tokens of the long prompt before each chunk.
        predicted_s: predicted iteration time per chunk (None without a predictor).
        over_budget: chunks where not even ``min_chunk`` fit the budget (taken anyway so the
            prefill progresses).
    """

    chunks: list[int] = field(default_factory=list)
    contexts: list[int] = field(default_factory=list)
    predicted_s: list[float | None] = field(default_factory=list)
    over_budget: int = 0


def chunk_schedule(
    spec: str,
    prompt_len: int,
    decode_lens: list[int],
    predictor: BatchTimePredictor | None = None,
    tbt_slo_s: float | None = None,
    min_chunk: int = 32,
    max_chunk: int = 8192,
) -> Schedule:
    """The chunks ``spec`` gives a ``prompt_len``-token prefill co-batched with decodes.

    Args:
        spec: ``adaptive``, ``fixed:N`` or ``static-decreasing[:...]``.
        prompt_len: tokens of the long prompt.
        decode_lens: KV length of each co-batched decode at the first iteration.
        predictor: the batch-time model (needed by ``adaptive``; also fills ``predicted_s``).
        tbt_slo_s: the iteration budget of ``adaptive``.
        min_chunk: adaptive's smallest chunk.
        max_chunk: adaptive's largest chunk.

    Raises:
        ConfigError: ``adaptive`` without a predictor or SLO, or a bad spec.
    """
    adaptive = spec == "adaptive"
    if adaptive:
        if predictor is None or tbt_slo_s is None:
            raise ConfigError("--chunk adaptive: needs the fitted batch-time predictor and --tbt-slo-ms")
        policy: object = AdaptiveChunkPolicy(predictor, tbt_slo_s, min_chunk=min(min_chunk, max_chunk), max_chunk=max_chunk)
    else:
        policy = make_chunk_policy(spec, max(prompt_len, 1))
    seq = _Seq(prompt_len)
    out = Schedule()
    step = 0
    while seq.num_uncomputed_tokens > 0:
        decodes = [_Seq(n + step) for n in decode_lens]
        if adaptive:
            policy.begin_batch(decodes)  # type: ignore[attr-defined]
        n = policy.chunk_size(seq, seq.num_uncomputed_tokens)  # type: ignore[attr-defined]
        if n <= 0:
            # nothing fits the budget: the smallest chunk anyway (a prefill must progress)
            n = min(min_chunk, seq.num_uncomputed_tokens)
            out.over_budget += 1
        n = min(n, seq.num_uncomputed_tokens)
        out.contexts.append(seq.num_computed_tokens)
        out.chunks.append(n)
        out.predicted_s.append(None if predictor is None else predictor.predict(
            IterationSample(n, seq.num_computed_tokens, len(decodes), sum(d.num_tokens for d in decodes))))
        seq.num_computed_tokens += n
        step += 1
    return out
