"""Types shared by the engine, the server and the load generator.

This module is the contract between ``charbench.engine.engine`` (scheduler and engine),
``charbench.engine.server`` (HTTP) and ``charbench.workloads.serving`` (serve-sweep). It
imports nothing heavy, so the CLI and the load generator can use it without torch.

All times are ``time.perf_counter()`` seconds (one monotonic clock per process).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

FinishReason = Literal["stop", "length", "abort"]


@dataclass
class SamplingParams:
    """Per-request sampling settings (OpenAI-compatible meanings).

    Attributes:
        max_tokens: most output tokens to generate.
        min_tokens: EOS and stop tokens are suppressed until this many were generated.
        temperature: 0 means greedy.
        top_k: keep the k most likely tokens; 0 disables.
        top_p: nucleus sampling mass; 1.0 disables.
        seed: per-request RNG seed; None draws from the engine's generator.
        stop: stop strings; the matched string is not included in the text.
        stop_token_ids: extra token ids that end the request.
        ignore_eos: keep generating past EOS (forces output lengths in sweeps).
    """

    max_tokens: int = 16
    min_tokens: int = 0
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False

    def validate(self) -> None:
        """Raise ValueError naming the field when a value is out of range."""
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")
        if self.min_tokens < 0 or self.min_tokens > self.max_tokens:
            raise ValueError("min_tokens must be in [0, max_tokens]")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0 (0 disables)")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError("top_p must be in (0, 1]")


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
        finish_reason: ``stop``, ``length`` or ``abort`` once finished.
        record: the request's timestamps.
    """

    request_id: str
    new_token_ids: list[int]
    new_text: str
    token_ids: list[int]
    text: str
    finished: bool
    finish_reason: FinishReason | None
    record: RequestRecord


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
