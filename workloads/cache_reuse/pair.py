"""A model pair at run time: two engine runners, the task items, and every reuse mode.

:class:`PairRuntime` loads the sender and the receiver (Hugging Face checkpoint folders,
the default pairs included), captures the sender's cache for each context once, prepares
the receiver's cache for a :class:`Mode` (the timed part), answers the query greedily over
it with the normal engine path and scores the answer with the LongBench scorers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from charbench.engine.api import EngineConfig
from charbench.engine.cache_transfer import ContextCache, blend, capture, greedy_after, inject
from charbench.engine.kv_cache import BlockAllocator
from charbench.engine.runner import ModelRunner, SeqChunk, make_runner
from charbench.errors import ConfigError
from charbench.workloads.cache_reuse.metrics import DATASET_METRIC, score

MODES = ("full_recompute", "full_reuse", "droidspeak", "reuse_only", "cacheblend")
CAPTURE_BUDGET_BYTES = 2 * 2**30
"""Sender captures kept in memory per pair; beyond this they are recomputed per use."""


@dataclass(frozen=True)
class Mode:
    """How the receiver gets its context cache.

    Attributes:
        kind: one of :data:`MODES`.
        group: ``droidspeak``: the recomputed layers ``(a, b)``.
        layer: ``reuse_only``: the one layer whose sender K/V is reused (all others recomputed).
        budget_layers: ``cacheblend``: the compute budget in layers (layer 0 for every token,
            then ``(budget - 1) / (L - 1)`` of the tokens in the other layers).
    """

    kind: str
    group: tuple[int, int] | None = None
    layer: int | None = None
    budget_layers: int | None = None

    def recomputed_layers(self, num_layers: int) -> float:
        """Layers of context compute this mode spends (the cost model's denominator)."""
        if self.kind == "full_recompute":
            return float(num_layers)
        if self.kind == "droidspeak":
            assert self.group is not None
            return float(self.group[1] - self.group[0] + 1)
        if self.kind == "reuse_only":
            return float(num_layers - 1)
        if self.kind == "cacheblend":
            return float(self.budget_layers or 0)
        return 0.0

    def blend_ratio(self, num_layers: int) -> float:
        """CacheBlend's recomputed token fraction for the budget."""
        return 0.0 if num_layers < 2 else ((self.budget_layers or 1) - 1) / (num_layers - 1)

    def groups(self, num_layers: int) -> list[tuple[int, int]]:
        """The recomputed groups of a DroidSpeak-style injection."""
        if self.kind == "droidspeak":
            assert self.group is not None
            return [self.group]
        if self.kind == "reuse_only":
            assert self.layer is not None
            return [g for g in ((0, self.layer - 1), (self.layer + 1, num_layers - 1)) if g[0] <= g[1]]
        return []

    @staticmethod
    def parse(kind: str, setting: str) -> "Mode":
        """From a point's ``mode`` and ``setting`` (``a-b``, a layer, a budget, or ``-``)."""
        if kind == "droidspeak":
            a, b = setting.split("-")
            return Mode(kind, group=(int(a), int(b)))
        if kind == "reuse_only":
            return Mode(kind, layer=int(setting))
        if kind == "cacheblend":
            return Mode(kind, budget_layers=int(setting))
        if kind in ("full_recompute", "full_reuse"):
            return Mode(kind)
        raise ConfigError(f"mode: unknown mode '{kind}'; valid: {', '.join(MODES)}")


@dataclass
class Item:
    """One tokenized example.

    Attributes:
        context_ids: the shared context (BOS first).
        query_ids: the suffix each model runs itself.
        answers: reference answers.
        metric: its LongBench metric.
    """

    context_ids: list[int]
    query_ids: list[int]
    answers: list[str]
    metric: str


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Records of a LongBench-style JSONL file.

    Raises:
        ConfigError: an unreadable line or a record without ``context``/``input``/``answers``.
    """
    out = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--data {path}: line {n} is not JSON ({exc.msg})") from None
        missing = [k for k in ("context", "input", "answers") if k not in rec]
        if missing or not isinstance(rec.get("answers"), list):
            raise ConfigError(f"--data {path}: line {n} needs 'context', 'input' and a list 'answers' "
                              f"(LongBench fields); missing {missing or ['answers as a list']}")
        out.append(rec)
    if not out:
        raise ConfigError(f"--data {path}: no records")
    return out


def tile_context(item: Item, tokens: int) -> Item:
    """``item`` with its context (after BOS) repeated to ``tokens`` tokens (for timing only)."""
    body = item.context_ids[1:] or item.context_ids
    reps = -(-tokens // len(body))
    return Item(item.context_ids[:1] + (body * reps)[: tokens - 1], item.query_ids, item.answers, item.metric)


def truncate_middle(ids: list[int], limit: int) -> list[int]:
    """LongBench's truncation: keep the first and last ``limit / 2`` tokens."""
    if len(ids) <= limit:
        return ids
    half = limit // 2
    return ids[:half] + ids[len(ids) - (limit - half):]


LONGBENCH_PROMPT = "\n\nQuestion: {input}\nAnswer:"
"""The query suffix of LongBench's QA prompts (after the context)."""


def make_items(records: Iterable[dict[str, Any]], tokenizer: Any, max_context_tokens: int,
               metric: str | None, prompt: str = "{input}") -> list[Item]:
    """Tokenize records: the context with BOS, the query (``prompt`` around ``input``) without."""
    items = []
    for rec in records:
        query = prompt.replace("{input}", str(rec["input"]))
        ctx_ids = truncate_middle(tokenizer.encode(str(rec["context"])), max_context_tokens)
        items.append(Item(ctx_ids, tokenizer.encode(query, add_bos=False), [str(a) for a in rec["answers"]],
                          metric or DATASET_METRIC.get(str(rec.get("dataset", "")), "f1")))
    return items


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PairRuntime:
    """Sender and receiver runners of one pair, with the sender's captures.

    Args:
        name: the pair's name.
        sender_dir: sender checkpoint folder.
        receiver_dir: receiver checkpoint folder (same architecture).
        device: ``cpu`` or ``cuda[:i]``.
        dtype: ``fp32``, ``bf16`` or ``fp16``.
        max_new_tokens: greedy tokens per answer.
    """

    def __init__(self, name: str, sender_dir: str, receiver_dir: str, device: str, dtype: str,
                 max_new_tokens: int) -> None:
        self.name = name
        self.max_new_tokens = max_new_tokens

        def runner(folder: str) -> ModelRunner:
            # two engines share the device: each takes at most 40% of the free memory for K/V
            return make_runner(EngineConfig(model=folder, device=device, dtype=dtype, max_num_seqs=1,
                                            gpu_memory_fraction=0.4))

        self.sender = runner(sender_dir)
        try:
            self.receiver = runner(receiver_dir)
        except BaseException:
            self.sender.shutdown()
            raise
        s, r = self.sender.model_config, self.receiver.model_config
        if (s.num_layers, s.hidden_size, s.num_kv_heads, s.head_dim) != (r.num_layers, r.hidden_size, r.num_kv_heads, r.head_dim):
            self.close()
            raise ConfigError(f"--sender {sender_dir} / --receiver {receiver_dir}: different architectures "
                              f"({s.num_layers} vs {r.num_layers} layers, hidden {s.hidden_size} vs {r.hidden_size}); "
                              "give two fine-tunes of the same base")
        self.num_layers = r.num_layers
        self.tokenizer = self.receiver.tokenizer
        self._alloc = {id(self.sender): BlockAllocator(self.sender.num_blocks),
                       id(self.receiver): BlockAllocator(self.receiver.num_blocks)}
        self._captures: dict[tuple[str, int], ContextCache] = {}
        self._capture_bytes = 0

    def close(self) -> None:
        """Shut both runners down."""
        self.sender.shutdown()
        self.receiver.shutdown()

    def _blocks(self, runner: ModelRunner, tokens: int) -> list[int]:
        need = -(-tokens // runner.block_size)
        if tokens > runner.max_model_len:
            raise ConfigError(f"--max-context-tokens: a context + query of {tokens} tokens exceeds the model's "
                              f"{runner.max_model_len}; lower --max-context-tokens")
        return self._alloc[id(runner)].allocate(need)

    def _free(self, runner: ModelRunner, blocks: list[int]) -> None:
        self._alloc[id(runner)].free(blocks)

    def sender_cache(self, key: tuple[str, int], item: Item) -> ContextCache:
        """The sender's capture of ``item``'s context (kept while under the memory budget)."""
        if key in self._captures:
            return self._captures[key]
        table = self._blocks(self.sender, len(item.context_ids))
        try:
            cache = capture(self.sender, item.context_ids, table)
        finally:
            self._free(self.sender, table)
        size = (cache.kv_layer_bytes() + cache.e_layer_bytes()) * cache.num_layers
        if self._capture_bytes + size <= CAPTURE_BUDGET_BYTES:
            self._captures[key] = cache
            self._capture_bytes += size
        return cache

    def prepare(self, mode: Mode, item: Item, cache: ContextCache, table: list[int]) -> int:
        """Fill the receiver's blocks with the context cache ``mode`` gives (the timed part).

        Returns:
            Tokens recomputed per layer beyond layer 0 (CacheBlend), else 0.
        """
        r = self.receiver
        if mode.kind == "full_recompute":
            r.forward([SeqChunk(0, item.context_ids, 0, table, False)])
        elif mode.kind == "full_reuse":
            inject(r, cache, table)
        elif mode.kind == "cacheblend":
            return len(blend(r, cache, table, mode.blend_ratio(self.num_layers)))
        else:
            inject(r, cache, table, recompute=mode.groups(self.num_layers))
        return 0

    def answer(self, mode: Mode, key: tuple[str, int], item: Item) -> float:
        """Score (0..1) of the receiver's greedy answer under ``mode``."""
        return score(self.generate(mode, key, item), item.answers, item.metric)

    def generate(self, mode: Mode, key: tuple[str, int], item: Item) -> str:
        """The receiver's greedy answer (text) over the context cache ``mode`` gives."""
        cache = self.sender_cache(key, item)
        n = len(item.context_ids)
        table = self._blocks(self.receiver, n + len(item.query_ids) + self.max_new_tokens)
        try:
            self.prepare(mode, item, cache, table)
            stop = tuple(self.receiver.model_config.eos_token_ids) + (self.tokenizer.eos_token_id,)
            ids = greedy_after(self.receiver, item.query_ids, n, table, self.max_new_tokens, stop)
        finally:
            self._free(self.receiver, table)
        return self.tokenizer.decode(ids)

    def quality_pct(self, mode: Mode, name: str, items: list[Item]) -> float:
        """Mean score x 100 over ``items`` (LongBench's dataset score)."""
        return 100.0 * sum(self.answer(mode, (name, i), it) for i, it in enumerate(items)) / len(items)

    def prefill_times_ms(self, mode: Mode, name: str, items: list[Item], repeats: int) -> tuple[list[float], int]:
        """Wall times (ms) of :meth:`prepare` (synchronized) and the recomputed tokens of the last call.

        One untimed call per item first warms it up.
        """
        times: list[float] = []
        recomputed = 0
        for i, it in enumerate(items):
            cache = self.sender_cache((name, i), it)
            table = self._blocks(self.receiver, len(it.context_ids))
            try:
                self.prepare(mode, it, cache, table)  # warm-up, discarded
                for _ in range(repeats):
                    _sync(self.receiver.device)
                    t0 = time.perf_counter()
                    recomputed = self.prepare(mode, it, cache, table)
                    _sync(self.receiver.device)
                    times.append(time.perf_counter() - t0)
            finally:
                self._free(self.receiver, table)
        return [1000.0 * t for t in times], recomputed

    def bytes_moved(self, mode: Mode, context_tokens: float) -> tuple[float, float]:
        """(E-cache bytes, reused K/V bytes) sent for a context of ``context_tokens``.

        DroidSpeak sends one E-cache per recomputed group plus the reused layers' K/V;
        CacheBlend and full reuse send every reused layer's K/V; full recompute sends text.
        """
        cfg, el = self.receiver.model_config, self.receiver.model.embed.element_size()
        kv_layer = 2 * cfg.num_kv_heads * cfg.head_dim * el * context_tokens
        e_layer = cfg.hidden_size * el * context_tokens
        n = self.num_layers
        if mode.kind == "full_recompute":
            return 0.0, 0.0
        if mode.kind == "full_reuse":
            return 0.0, n * kv_layer
        if mode.kind == "cacheblend":
            return 0.0, (n - 1) * kv_layer
        groups = mode.groups(n)
        inside = sum(b - a + 1 for a, b in groups)
        return len(groups) * e_layer, (n - inside) * kv_layer
