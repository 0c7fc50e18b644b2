"""The model runner: owns the model, the KV-cache storage and the tensor-parallel ranks.

The scheduler decides what runs; the runner runs it. One :meth:`ModelRunner.forward`
call executes one engine iteration: every chunk (prefill chunks and single decode
tokens of many sequences) is packed into one ``[T, hidden]`` batch, each layer is one
matmul per projection, attention handles the sequences (batched decode, per-chunk
prefill), and the K/V of every token is written into the paged cache. Logits come back
for the chunks that asked for them::

    from charbench.engine.api import EngineConfig
    runner = make_runner(EngineConfig(model="tiny"))
    blocks = list(range(2))                     # the scheduler allocates these
    logits = runner.forward([SeqChunk(seq_id=0, token_ids=runner.tokenizer.encode("hi"),
                                      start_pos=0, block_table=blocks, need_logits=True)])
    runner.shutdown()

With ``tp > 1`` ``make_runner`` spawns ``tp - 1`` worker processes (gloo on CPU, NCCL on
GPU, rendezvous on 127.0.0.1); under ``torchrun`` ranks > 0 enter the worker loop inside
``make_runner`` and exit the process when rank 0 shuts down. The script that creates a
tp>1 runner must guard its entry point with ``if __name__ == "__main__":`` (spawn start
method). Only one spawned tensor-parallel runner can live in a process at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from charbench.engine.api import EngineConfig
from charbench.engine.attention import PagedAttention, build_metadata, check_backend
from charbench.engine.kv_cache import PagedKVCache, kv_bytes_per_token
from charbench.engine.model import (
    PRESETS,
    LlamaModel,
    ModelConfig,
    check_tp_divisible,
    get_preset,
    to_torch_dtype,
)
from charbench.engine.tokenizer import ByteTokenizer, HFTokenizer, load_tokenizer
from charbench.engine.tp import TPGroup, free_port, rank_device, torchrun_env
from charbench.engine.tp_worker import spawn_workers, stop_workers, wait_for
from charbench.engine.weights import (
    RandomSource,
    SafetensorsSource,
    config_from_checkpoint,
    load_weights,
)
from charbench.errors import ConfigError, DeviceError

log = logging.getLogger(__name__)


@dataclass
class SeqChunk:
    """The work of one sequence in one iteration.

    Attributes:
        seq_id: engine-internal sequence id.
        token_ids: tokens to run now (a prefill chunk, or 1 token for decode).
        start_pos: position of ``token_ids[0]`` (= tokens already in the KV cache).
        block_table: blocks holding positions ``[0, start_pos + len(token_ids))``,
            allocated by the scheduler beforehand.
        need_logits: True when the last token's logits are needed.
    """

    seq_id: int
    token_ids: list[int]
    start_pos: int
    block_table: list[int]
    need_logits: bool


def is_checkpoint(model: str) -> bool:
    """True when ``--model`` names a local folder (a preset name wins over a folder of the
    same name that has no config.json)."""
    path = Path(model)
    if not path.is_dir():
        return False
    return model not in PRESETS or (path / "config.json").is_file()


def resolve_model_config(model: str) -> ModelConfig:
    """A preset name or a local checkpoint folder -> :class:`ModelConfig`.

    Raises:
        ConfigError: unknown preset, or an unreadable/unsupported checkpoint.
    """
    if is_checkpoint(model):
        return config_from_checkpoint(model)
    if "/" in model or model.startswith("."):
        raise ConfigError(
            f"--model: '{model}' is not a folder; give a preset name or a local checkpoint "
            "folder (nothing is downloaded)"
        )
    return get_preset(model)


def check_device(device: torch.device, dtype: torch.dtype, dtype_name: str) -> None:
    """Check that ``device`` exists and runs matmuls in ``dtype``.

    Raises:
        DeviceError: naming the option and the fix.
    """
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"--device {device}: CUDA is not available (torch {torch.__version__}); use --device cpu"
            )
        count = torch.cuda.device_count()
        if (device.index or 0) >= count:
            raise DeviceError(f"--device {device}: only {count} CUDA device(s) visible")
        if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            raise DeviceError(f"--dtype {dtype_name}: {torch.cuda.get_device_name(device)} has no bf16; use fp16")
    elif device.type != "cpu":
        raise DeviceError(f"--device {device}: unsupported device type; use cpu or cuda[:i]")
    try:
        x = torch.ones(2, 8, dtype=dtype, device=device)
        F.linear(x, x)
    except RuntimeError as exc:
        raise DeviceError(f"--dtype {dtype_name}: matmul not supported on {device} ({exc}); use fp32") from exc


def _validate(cfg: EngineConfig, model_cfg: ModelConfig) -> None:
    """Checks that need no process group (run before spawning workers)."""
    dtype = to_torch_dtype(cfg.dtype)
    check_tp_divisible(model_cfg, cfg.tp)
    dev0 = torch.device(cfg.device)
    if dev0.type == "cuda" and cfg.tp > 1 and torch.cuda.is_available():
        need = (dev0.index or 0) + cfg.tp
        if need > torch.cuda.device_count():
            raise DeviceError(
                f"--tp {cfg.tp}: needs CUDA devices {dev0.index or 0}..{need - 1}, "
                f"{torch.cuda.device_count()} visible"
            )
    check_device(dev0, dtype, cfg.dtype)
    check_backend(cfg.attention_backend, dev0)
    if cfg.block_size < 1:
        raise ConfigError(f"--block-size: must be >= 1, got {cfg.block_size}")


class ModelRunner:
    """Owns the model shard and the KV-cache shard of one rank.

    Build it with :func:`make_runner`. Rank 0 runs :meth:`forward`; other ranks run
    :meth:`serve_forever`.

    Attributes:
        model_config: the model's shape.
        tokenizer: byte tokenizer (presets) or tokenizer.json (checkpoints); None on
            workers.
        block_size: tokens per KV block.
        num_blocks: KV blocks (same on every rank).
        weights_kind: ``random`` (presets) or ``checkpoint``.
        max_model_len: longest sequence the engine should admit.
        kv_bytes_per_token: KV bytes per token on this rank.
    """

    def __init__(
        self,
        cfg: EngineConfig,
        tp_group: TPGroup | None = None,
        device: torch.device | None = None,
        before_collectives: Callable[[], None] | None = None,
    ) -> None:
        self.engine_config = cfg
        self.model_config = resolve_model_config(cfg.model)
        self.tp_group = tp_group
        self.rank = tp_group.rank if tp_group else 0
        self.tp = cfg.tp
        self.device = device or (tp_group.device if tp_group else rank_device(cfg.device, 0))
        self.dtype = to_torch_dtype(cfg.dtype)
        self.block_size = cfg.block_size
        self.weights_kind = "checkpoint" if is_checkpoint(cfg.model) else "random"
        self.max_model_len = cfg.max_model_len or self.model_config.max_position_embeddings
        self._workers: list = []
        self._closed = False
        check_device(self.device, self.dtype, cfg.dtype)
        check_tp_divisible(self.model_config, self.tp)
        self.tokenizer: ByteTokenizer | HFTokenizer | None = (
            load_tokenizer(cfg.model, self.model_config, self.weights_kind == "checkpoint")
            if self.rank == 0 else None
        )

        self.model = LlamaModel(
            self.model_config, self.dtype, self.device, tp=self.tp,
            with_lm_head=self.rank == 0,
            all_reduce=tp_group.all_reduce if tp_group and self.tp > 1 else None,
        )
        if self.weights_kind == "checkpoint":
            source = SafetensorsSource(cfg.model)
            load_weights(self.model, source, self.rank, self.tp)
            source.close()
        else:
            load_weights(self.model, RandomSource(cfg.seed, self.device), self.rank, self.tp)
        if before_collectives is not None:
            before_collectives()

        self.kv_bytes_per_token = kv_bytes_per_token(self.model_config, self.dtype, self.tp)
        num_blocks = PagedKVCache.num_blocks_for(
            self.model_config, self.block_size, self.dtype, self.device,
            cfg.kv_cache_gb, cfg.gpu_memory_fraction, self.tp,
        )
        if cfg.kv_cache_gb is None:
            # blocks beyond max_num_seqs full-length sequences can never be used
            useful = cfg.max_num_seqs * -(-self.max_model_len // self.block_size)
            num_blocks = min(num_blocks, max(useful, 1))
        if tp_group is not None and self.tp > 1:
            t = torch.tensor([num_blocks], dtype=torch.long)
            dist.all_reduce(t, op=dist.ReduceOp.MIN, group=tp_group.ctrl)
            num_blocks = int(t.item())
        self.num_blocks = num_blocks
        self.kv_cache = PagedKVCache(
            self.model_config, num_blocks, self.block_size, self.dtype, self.device, self.tp
        )
        self.attention = PagedAttention(cfg.attention_backend, self.model_config.head_dim ** -0.5)
        log.info(
            "model %s (%s weights, %s, %s, tp=%d): %d KV blocks of %d tokens",
            self.model_config.name, self.weights_kind, cfg.dtype, self.device, self.tp,
            num_blocks, self.block_size,
        )

    # ------------------------------------------------------------------ forward

    def forward(self, chunks: Sequence[SeqChunk]) -> torch.Tensor:
        """Run one iteration.

        Args:
            chunks: this iteration's work, any mix of prefill chunks and decode tokens.

        Returns:
            float32 logits ``[number of chunks with need_logits, vocab]`` in chunk order.

        Raises:
            ValueError: a token id outside the vocabulary, a block id outside the cache,
                or a block table too short for the chunk.
        """
        if self._closed:
            raise RuntimeError("forward() after shutdown()")
        if self.tp_group is not None and self.tp > 1 and self.rank == 0:
            self._check(chunks)
            self.tp_group.broadcast_chunks(chunks)
        elif self.rank == 0:
            self._check(chunks)
        out = self._forward_local(chunks)
        assert out is not None or self.rank != 0
        return out  # type: ignore[return-value]

    def _check(self, chunks: Sequence[SeqChunk]) -> None:
        vocab, nblk = self.model_config.vocab_size, self.num_blocks
        for c in chunks:
            if c.token_ids and (min(c.token_ids) < 0 or max(c.token_ids) >= vocab):
                raise ValueError(f"seq {c.seq_id}: token id outside [0, {vocab})")
            if c.block_table and (min(c.block_table) < 0 or max(c.block_table) >= nblk):
                raise ValueError(f"seq {c.seq_id}: block id outside [0, {nblk})")

    @torch.inference_mode()
    def _forward_local(self, chunks: Sequence[SeqChunk]) -> torch.Tensor | None:
        if not chunks:
            return torch.empty(0, self.model_config.vocab_size, device=self.device)
        # decode tokens first: they form one batched attention call
        order = [i for i, c in enumerate(chunks) if len(c.token_ids) == 1]
        order += [i for i, c in enumerate(chunks) if len(c.token_ids) != 1]
        ordered = [chunks[i] for i in order]
        meta = build_metadata(ordered, self.block_size, self.device, self.attention.backend, self.dtype)
        hidden = self.model(
            meta.input_ids, meta.positions, self.kv_cache.layers, self.attention, meta,
            max_position=meta.max_position,
        )
        if self.rank != 0:
            return None
        # packed index of each chunk's last token
        last: dict[int, int] = {}
        off = 0
        for i, c in zip(order, ordered):
            off += len(c.token_ids)
            last[i] = off - 1
        rows = [last[i] for i, c in enumerate(chunks) if c.need_logits]
        if not rows:
            return torch.empty(0, self.model_config.vocab_size, device=self.device)
        if rows == list(range(rows[0], rows[0] + len(rows))):
            sel = hidden[rows[0] : rows[0] + len(rows)]
        else:
            sel = hidden[torch.tensor(rows, device=self.device)]
        return self.model.compute_logits(sel)

    # ------------------------------------------------------------------ workers

    def serve_forever(self) -> None:
        """Worker loop: run every batch rank 0 broadcasts until it says shut down."""
        assert self.tp_group is not None and self.rank != 0
        while True:
            chunks = self.tp_group.broadcast_chunks(None)
            if chunks is None:
                break
            self._forward_local(chunks)
        self._closed = True

    def shutdown(self) -> None:
        """Stop tensor-parallel workers and release the process group (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self.tp_group is not None and self.rank == 0 and self.tp > 1:
            try:
                self.tp_group.broadcast_chunks(None)
            finally:
                stop_workers(self._workers)
                self._workers = []
                self.tp_group.destroy()


def make_runner(cfg: EngineConfig) -> ModelRunner:
    """Build the runner for ``cfg`` (presets vs checkpoints, dtype, device, KV capacity,
    attention backend, tensor parallelism).

    Raises:
        ConfigError: invalid options.
        DeviceError: the device, dtype or backend cannot run here, or a worker failed.
    """
    model_cfg = resolve_model_config(cfg.model)
    _validate(cfg, model_cfg)
    env = torchrun_env()
    if env is not None:
        rank, world, local = env
        if world != cfg.tp:
            raise ConfigError(f"--tp {cfg.tp}: torchrun started {world} processes; pass --tp {world}")
        base = torch.device(cfg.device)
        device = torch.device("cuda", local) if base.type == "cuda" else base
        group = TPGroup.init(rank, world, "env://", device)
        runner = ModelRunner(cfg, tp_group=group, device=device)
        if rank != 0:
            runner.serve_forever()
            group.destroy()
            raise SystemExit(0)
        return runner
    if cfg.tp == 1:
        return ModelRunner(cfg)
    if torch.distributed.is_initialized():
        raise ConfigError(
            f"--tp {cfg.tp}: a torch.distributed process group already exists in this "
            "process (another tensor-parallel runner?); shut it down first"
        )
    port = free_port()
    workers = spawn_workers(cfg, cfg.tp, port, runner_cls=ModelRunner)
    group: TPGroup | None = None
    try:
        wait_for(workers, "started")
        group = TPGroup.init(0, cfg.tp, f"tcp://127.0.0.1:{port}", rank_device(cfg.device, 0))
        runner = ModelRunner(cfg, tp_group=group, before_collectives=lambda: wait_for(workers, "loaded"))
        wait_for(workers, "ready")
    except BaseException:
        stop_workers(workers, timeout_s=0.1)
        if group is not None:
            group.destroy()
        raise
    runner._workers = workers
    return runner
