"""Types shared by the engine, the server and the load generator.

This module is the contract between ``charbench.engine.engine`` (scheduler and engine),
``charbench.engine.server`` (HTTP) and ``charbench.workloads.serving`` (serve-sweep). It
imports nothing heavy, so the CLI and the load generator can use it without torch.

All times are ``time.perf_counter()`` seconds (one monotonic clock per process).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

FinishReason = Literal["stop", "length", "abort", "error"]

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
GREEDY_TEMPERATURE = 1e-5
"""Temperatures below this sample greedily (as in vLLM): dividing logits by a tiny
temperature overflows float32."""


class SamplingParamsError(ValueError):
    """A sampling setting is out of range.

    Attributes:
        param: the field at fault (the OpenAI request field of the same name).
    """

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_int(name: str, value: object, lo: int, hi: int) -> None:
    """Refuse ``value`` unless it is an int in [lo, hi] (hi = INT64_MAX reads as 64-bit)."""
    if not _is_int(value):
        raise SamplingParamsError(name, f"must be an integer (got {value!r})")
    if value < lo:  # type: ignore[operator]
        raise SamplingParamsError(name, f"must be greater than or equal to {lo} (got {value})")
    if value > hi:  # type: ignore[operator]
        limit = f"{hi} (the 64-bit limit)" if hi == INT64_MAX else str(hi)
        raise SamplingParamsError(name, f"must be less than or equal to {limit} (got {value})")


def _check_float(name: str, value: object, lo: float, hi: float, lo_open: bool = False) -> None:
    """Refuse ``value`` unless it is a finite number in [lo, hi] ((lo, hi] with ``lo_open``)."""
    if not _is_number(value) or not math.isfinite(value):  # type: ignore[arg-type]
        raise SamplingParamsError(name, f"must be a finite number (got {value!r})")
    low_ok = value > lo if lo_open else value >= lo  # type: ignore[operator]
    if low_ok and value <= hi:  # type: ignore[operator]
        return
    low = f"greater than {lo:g}" if lo_open else f"greater than or equal to {lo:g}"
    rng = low if hi == math.inf else f"{low} and less than or equal to {hi:g}"
    raise SamplingParamsError(name, f"must be {rng} (got {value})")


@dataclass
class SamplingParams:
    """Per-request sampling settings (OpenAI/vLLM meanings).

    The logits of a request go through, in order: ``min_tokens`` masking, repetition,
    frequency and presence penalties, temperature, ``min_p``, ``top_k``, ``top_p`` (the
    order of vLLM's sampler).

    Attributes:
        max_tokens: most output tokens to generate.
        min_tokens: EOS and stop tokens are suppressed until this many were generated.
        temperature: 0 (or below 1e-5) means greedy.
        top_k: keep the k most likely tokens; 0 or -1 disables; a k above the
            vocabulary keeps the whole vocabulary.
        top_p: nucleus sampling mass; 1.0 disables.
        min_p: drop tokens whose probability is below ``min_p`` times the most likely
            token's; 0 disables.
        repetition_penalty: > 0; tokens of the prompt or the output get their positive
            logits divided by it and their negative logits multiplied by it; 1 disables.
        presence_penalty: in [-2, 2]; subtracted from the logit of every token that
            occurs in the output.
        frequency_penalty: in [-2, 2]; times the token's count in the output, subtracted
            from its logit.
        seed: per-request RNG seed (a 64-bit signed integer); None draws from the
            engine's generator.
        stop: stop strings; the matched string is not included in the text.
        stop_token_ids: extra token ids that end the request.
        ignore_eos: keep generating past EOS (forces output lengths in sweeps).
    """

    max_tokens: int = 16
    min_tokens: int = 0
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False

    @property
    def is_greedy(self) -> bool:
        """True when the request takes the most likely token."""
        return self.temperature < GREEDY_TEMPERATURE

    @property
    def has_penalties(self) -> bool:
        """True when a repetition, frequency or presence penalty changes the logits."""
        return (
            self.repetition_penalty != 1.0
            or self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
        )

    def validate(self, vocab_size: int | None = None) -> None:
        """Check every field against its real range.

        Args:
            vocab_size: the model's vocabulary; ``stop_token_ids`` must lie below it
                (None checks only that they are non-negative 64-bit integers).

        Raises:
            SamplingParamsError: (a ValueError) naming the field, the range and the value.
        """
        _check_int("max_tokens", self.max_tokens, 1, INT64_MAX)
        _check_int("min_tokens", self.min_tokens, 0, INT64_MAX)
        if self.min_tokens > self.max_tokens:
            raise SamplingParamsError(
                "min_tokens",
                f"{self.min_tokens} exceeds max_tokens {self.max_tokens}; "
                "lower min_tokens or raise max_tokens",
            )
        _check_float("temperature", self.temperature, 0.0, math.inf)
        _check_int("top_k", self.top_k, -1, INT64_MAX)
        _check_float("top_p", self.top_p, 0.0, 1.0, lo_open=True)
        _check_float("min_p", self.min_p, 0.0, 1.0)
        _check_float("repetition_penalty", self.repetition_penalty, 0.0, math.inf, lo_open=True)
        _check_float("presence_penalty", self.presence_penalty, -2.0, 2.0)
        _check_float("frequency_penalty", self.frequency_penalty, -2.0, 2.0)
        if self.seed is not None:
            _check_int("seed", self.seed, INT64_MIN, INT64_MAX)
        if not isinstance(self.stop, list) or not all(isinstance(s, str) for s in self.stop):
            raise SamplingParamsError("stop", f"must be a list of strings (got {self.stop!r})")
        if not isinstance(self.stop_token_ids, list):
            raise SamplingParamsError(
                "stop_token_ids", f"must be a list of token ids (got {self.stop_token_ids!r})"
            )
        hi = INT64_MAX if vocab_size is None else vocab_size - 1
        for t in self.stop_token_ids:
            if not _is_int(t) or not 0 <= t <= hi:
                rng = "non-negative 64-bit integers" if vocab_size is None else f"in [0, {vocab_size})"
                raise SamplingParamsError(
                    "stop_token_ids", f"token id {t!r} is outside the vocabulary; ids must be {rng}"
                )


@dataclass
class EngineConfig:
    """Everything needed to build an engine.

    Attributes:
        model: a preset name (``tiny``, ``small``, ``llama-2-7b``, ...) or a local
            Hugging Face checkpoint folder.
        dtype: ``fp32``, ``bf16`` or ``fp16``.
        device: ``cpu``, ``cuda`` or ``cuda:i``.
        max_num_seqs: most sequences in one iteration's batch.
        max_num_batched_tokens: per-iteration token budget (decodes + prefill chunks).
        block_size: tokens per KV-cache block.
        kv_cache_gb: KV-cache capacity in GiB; None uses ``gpu_memory_fraction`` of free
            GPU memory (GPU) or 1 GiB (CPU).
        gpu_memory_fraction: fraction of free GPU memory for the KV cache when
            ``kv_cache_gb`` is None.
        tp: tensor-parallel degree.
        attention_backend: ``torch`` or ``triton``.
        chunk_policy: ``fixed`` (adaptive policies plug in later).
        max_model_len: longest prompt + output; None uses the model's context length.
        seed: seed for random weights (presets) and the default sampler.
        max_queue: most waiting requests before the server answers 429.
    """

    model: str = "tiny"
    dtype: str = "fp32"
    device: str = "cpu"
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 512
    block_size: int = 16
    kv_cache_gb: float | None = None
    gpu_memory_fraction: float = 0.9
    tp: int = 1
    attention_backend: str = "torch"
    chunk_policy: str = "fixed"
    max_model_len: int | None = None
    seed: int = 0
    max_queue: int = 1024


@dataclass
class RequestRecord:
    """Timestamps of one request's life (``perf_counter`` seconds; None = not reached)."""

    request_id: str
    arrival_time_s: float
    prompt_tokens: int
    first_scheduled_time_s: float | None = None
    first_token_time_s: float | None = None
    token_times_s: list[float] = field(default_factory=list)
    finish_time_s: float | None = None
    output_tokens: int = 0
    preemptions: int = 0
    finish_reason: FinishReason | None = None

    @property
    def ttft_ms(self) -> float | None:
        """Time to first token: first token time - arrival (ms)."""
        if self.first_token_time_s is None:
            return None
        return (self.first_token_time_s - self.arrival_time_s) * 1e3

    @property
    def e2el_ms(self) -> float | None:
        """End-to-end latency: finish - arrival (ms)."""
        if self.finish_time_s is None:
            return None
        return (self.finish_time_s - self.arrival_time_s) * 1e3

    @property
    def tpot_ms(self) -> float | None:
        """Time per output token after the first: (e2el - ttft) / (out - 1), vLLM's definition."""
        if self.output_tokens < 2 or self.e2el_ms is None or self.ttft_ms is None:
            return None
        return (self.e2el_ms - self.ttft_ms) / (self.output_tokens - 1)

    @property
    def itl_ms(self) -> list[float]:
        """Inter-token latencies: gaps between consecutive token times (ms)."""
        t = self.token_times_s
        return [(b - a) * 1e3 for a, b in zip(t, t[1:])]


@dataclass
class RequestOutput:
    """What one engine step produced for one request.

    Attributes:
        request_id: the id given to ``add_request``.
        new_token_ids: tokens generated in this step (usually one).
        new_text: text that became final in this step (stop strings held back).
        token_ids: all output token ids so far.
        text: all output text so far.
        finished: True on the request's last output.
        finish_reason: ``stop``, ``length``, ``abort`` or ``error`` once finished.
        record: the request's timestamps.
        error: why the engine failed the request (``finish_reason="error"``), else None.
    """

    request_id: str
    new_token_ids: list[int]
    new_text: str
    token_ids: list[int]
    text: str
    finished: bool
    finish_reason: FinishReason | None
    record: RequestRecord
    error: str | None = None


@dataclass
class EngineStats:
    """Counters for /metrics and for load reports."""

    num_waiting: int
    num_running: int
    kv_blocks_used: int
    kv_blocks_total: int
    prompt_tokens_total: int
    generation_tokens_total: int
    preemptions_total: int
    requests_finished_total: int

    @property
    def kv_cache_usage(self) -> float:
        """Fraction of KV-cache blocks in use."""
        return self.kv_blocks_used / self.kv_blocks_total if self.kv_blocks_total else 0.0
