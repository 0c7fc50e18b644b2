"""Fixtures for the engine's model-side tests: tiny HF checkpoints and a chunk driver."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch


def _write_tokenizer(folder: Path, vocab_size: int, bos: str | None = "<s>") -> None:
    """A word-level tokenizer.json over ``vocab_size`` ids (ids 0..2 are specials)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders

    words = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(vocab_size - 3)]
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": bos, "eos_token": "</s>"}))


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Random weights everywhere, norms near 1 and non-zero biases (HF inits them to 0/1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))


HF_KINDS: dict[str, dict[str, Any]] = {
    # grouped-query attention, untied head
    "llama_gqa": dict(arch="llama", num_attention_heads=4, num_key_value_heads=2),
    # Llama-3 rope scaling (a medium-frequency band at these sizes), tied embeddings,
    # attention_bias on q/k/v/o
    "llama3_rope_tied_bias": dict(
        arch="llama", num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=True,
        attention_bias=True,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 64}),
    # Qwen2: bias on q/k/v only, sharded safetensors with an index
    "qwen2_sharded": dict(arch="qwen2", num_attention_heads=4, num_key_value_heads=2, shard=True),
}


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Path, Any]]:
    """Factory: kind -> (checkpoint folder, the HF model in fp32 eval mode). Cached."""
    cache: dict[str, tuple[Path, Any]] = {}

    def make(kind: str) -> tuple[Path, Any]:
        if kind in cache:
            return cache[kind]
        transformers = pytest.importorskip("transformers")
        spec = dict(HF_KINDS[kind])
        arch = spec.pop("arch")
        shard = spec.pop("shard", False)
        common = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      max_position_embeddings=256, rms_norm_eps=1e-6, bos_token_id=1,
                      eos_token_id=2, attn_implementation="eager")
        common.update(spec)
        if arch == "qwen2":
            if not hasattr(transformers, "Qwen2ForCausalLM"):
                pytest.skip("transformers has no Qwen2ForCausalLM")
            model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common))
        else:
            model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common))
        _randomize(model, seed=len(cache) + 1)
        model = model.float().eval()
        folder = tmp_path_factory.mktemp(kind)
        model.save_pretrained(str(folder), max_shard_size="60KB" if shard else "1GB")
        _write_tokenizer(folder, common["vocab_size"])
        cache[kind] = (folder, model)
        return cache[kind]

    return make


@pytest.fixture
def hf_checkpoint_copy(hf_checkpoint: Callable[[str], tuple[Path, Any]], tmp_path: Path) -> Callable[..., tuple[Path, Any]]:
    """Factory: ``(chat_template=None, name="ck") -> (folder, HF model)``: a copy of the
    llama_gqa checkpoint whose tokenizer transformers re-saved (transformers 5 writes a
    chat template to chat_template.jinja, not into tokenizer_config.json)."""
    import shutil

    def make(chat_template: str | None = None, name: str = "ck") -> tuple[Path, Any]:
        transformers = pytest.importorskip("transformers")
        folder, hf = hf_checkpoint("llama_gqa")
        dst = tmp_path / name
        shutil.copytree(folder, dst)
        tok = transformers.PreTrainedTokenizerFast(
            tokenizer_file=str(dst / "tokenizer.json"), bos_token="<s>", eos_token="</s>", unk_token="<unk>")
        if chat_template is not None:
            tok.chat_template = chat_template
        tok.save_pretrained(str(dst))
        return dst, hf

    return make


class ChunkDriver:
    """Drives a runner like a scheduler would: allocates blocks, feeds chunks, tracks lengths.

    Each driver has its own allocator over the whole cache, so two drivers of one runner
    overwrite each other's blocks unless the second one is built with ``share=first``
    (then they split one allocator).
    """

    def __init__(self, runner: Any, scatter_seed: int | None = None, share: ChunkDriver | None = None) -> None:
        from charbench.engine.kv_cache import BlockAllocator

        self.runner = runner
        self.alloc = share.alloc if share is not None else BlockAllocator(runner.num_blocks)
        self.tables: dict[int, list[int]] = {}
        self.lens: dict[int, int] = {}
        if scatter_seed is not None:  # hand out the free blocks in a random order
            g = torch.Generator().manual_seed(scatter_seed)
            free = self.alloc._free
            self.alloc._free = [free[i] for i in torch.randperm(len(free), generator=g).tolist()]

    def chunk(self, seq_id: int, tokens: list[int], need_logits: bool = True) -> Any:
        """A SeqChunk for ``tokens`` appended to ``seq_id``, blocks allocated as needed."""
        from charbench.engine.runner import SeqChunk

        start = self.lens.get(seq_id, 0)
        table = self.tables.setdefault(seq_id, [])
        need = -(-(start + len(tokens)) // self.runner.block_size) - len(table)
        if need > 0:
            table.extend(self.alloc.allocate(need))
        self.lens[seq_id] = start + len(tokens)
        return SeqChunk(seq_id, list(tokens), start, list(table), need_logits)

    def run(self, *specs: tuple[int, list[int]]) -> torch.Tensor:
        """One iteration: ``(seq_id, tokens)`` per chunk, logits for every chunk."""
        return self.runner.forward([self.chunk(s, t) for s, t in specs])

    def free(self, seq_id: int) -> None:
        """Release a sequence's blocks."""
        self.alloc.free(self.tables.pop(seq_id))
        self.lens.pop(seq_id)


@pytest.fixture
def chunk_driver() -> Callable[..., ChunkDriver]:
    """Factory: ``chunk_driver(runner, scatter_seed=None, share=None) -> ChunkDriver``."""
    return ChunkDriver


@pytest.fixture(scope="session")
def tiny_runner() -> Any:
    """A tp=1 fp32 runner of the tiny preset with a small KV cache (shared; reuse only
    through fresh ChunkDrivers that free their blocks)."""
    from charbench.engine.api import EngineConfig
    from charbench.engine.runner import make_runner

    runner = make_runner(EngineConfig(model="tiny", kv_cache_gb=0.02, block_size=4, seed=3))
    yield runner
    runner.shutdown()
