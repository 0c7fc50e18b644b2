"""Llama-family decoder: model config, named presets and the torch module.

One module covers Llama-2/3 (incl. Llama-3 rope scaling), Mistral and Qwen2 (bias on the
q/k/v projections): RMSNorm, rotary position embeddings, grouped-query attention over a
paged KV cache, SwiGLU MLP, tied or untied embeddings. Projections are fused (one
``qkv`` and one ``gate_up`` weight per layer) and the batch is packed: every token of
every sequence in an iteration is one row of a ``[T, hidden]`` tensor, so each linear
layer is a single matmul; only attention looks at sequences separately.

Tensor parallelism (Megatron style): a rank holds ``num_heads/tp`` query heads,
``num_kv_heads/tp`` KV heads and ``intermediate_size/tp`` MLP columns; the output and
down projections are row-parallel and followed by an all-reduce.

Example::

    cfg = get_preset("tiny")
    print(cfg.params_count(), cfg.weight_bytes("bf16"), cfg.flops_per_token())
    model = LlamaModel(cfg, dtype=torch.float32, device="cpu")  # then load weights
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from charbench.errors import ConfigError

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
"""Engine dtype names -> torch dtypes."""


def to_torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """Map ``fp32``/``bf16``/``fp16`` (or a torch dtype) to a torch dtype.

    Raises:
        ConfigError: for an unknown name.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype: unknown dtype '{dtype}'; valid: {', '.join(DTYPES)}")
    return DTYPES[dtype]


def dtype_bytes(dtype: str | torch.dtype) -> int:
    """Bytes per element of ``dtype``."""
    return torch.empty((), dtype=to_torch_dtype(dtype)).element_size()


@dataclass
class ModelConfig:
    """Shape and hyper-parameters of a Llama-family decoder.

    Attributes:
        name: preset name or checkpoint folder.
        vocab_size: rows of the embedding and the LM head.
        hidden_size: model width.
        num_layers: decoder layers.
        num_heads: query heads.
        num_kv_heads: key/value heads (< num_heads: grouped-query attention).
        head_dim: per-head width (usually hidden_size / num_heads).
        intermediate_size: SwiGLU MLP width.
        max_position_embeddings: context length the model was trained for (capped by the
            sliding window where one is enabled, see ``sliding_window``).
        rope_theta: RoPE base.
        rope_scaling: None, ``{"rope_type": "linear", "factor": f}`` or the Llama-3 form
            ``{"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
            "original_max_position_embeddings"}``.
        rms_norm_eps: RMSNorm epsilon.
        tie_word_embeddings: LM head shares the embedding matrix.
        attention_bias: q/k/v projections have a bias (Qwen2; Llama with attention_bias).
        attention_out_bias: the output projection has a bias (Llama with attention_bias).
        bos_token_id: beginning-of-sequence token, None if the model has none.
        eos_token_id: end-of-sequence token.
        eos_token_ids: every token that ends generation (checkpoints may list several).
        architecture: ``llama``, ``mistral`` or ``qwen2`` (informational).
        sliding_window: the checkpoint's sliding-window size, if any; this engine runs
            full attention and caps ``max_position_embeddings`` at the window, where the
            two are identical.
    """

    name: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    max_position_embeddings: int = 4096
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    attention_out_bias: bool = False
    bos_token_id: int | None = 256
    eos_token_id: int = 257
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)
    architecture: str = "llama"
    sliding_window: int | None = None

    def __post_init__(self) -> None:
        if not self.eos_token_ids:
            self.eos_token_ids = (self.eos_token_id,)
        self.validate()

    def validate(self) -> None:
        """Check that the shapes fit together.

        Raises:
            ConfigError: naming the inconsistent fields.
        """
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
                     "head_dim", "intermediate_size", "max_position_embeddings"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"model config '{self.name}': {name} must be >= 1")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"model config '{self.name}': num_heads ({self.num_heads}) must be a multiple "
                f"of num_kv_heads ({self.num_kv_heads})"
            )
        if self.head_dim % 2:
            raise ConfigError(f"model config '{self.name}': head_dim must be even for RoPE")

    @property
    def q_size(self) -> int:
        """Width of all query heads (``num_heads * head_dim``)."""
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        """Width of all key (or value) heads (``num_kv_heads * head_dim``)."""
        return self.num_kv_heads * self.head_dim

    def layer_params(self) -> int:
        """Parameters of one decoder layer (weights, biases, norms)."""
        h = self.hidden_size
        attn = h * self.q_size + 2 * h * self.kv_size + self.q_size * h
        if self.attention_bias:
            attn += self.q_size + 2 * self.kv_size
        if self.attention_out_bias:
            attn += h
        mlp = 3 * h * self.intermediate_size
        return attn + mlp + 2 * h

    def params_count(self) -> int:
        """Total parameters (a tied LM head counted once)."""
        emb = self.vocab_size * self.hidden_size
        head = 0 if self.tie_word_embeddings else emb
        return emb + head + self.num_layers * self.layer_params() + self.hidden_size

    def weight_bytes(self, dtype: str | torch.dtype) -> int:
        """Bytes of all weights in ``dtype``."""
        return self.params_count() * dtype_bytes(dtype)

    def flops_per_token(self, context_len: int = 0) -> int:
        """Forward FLOPs for one token: 2 per matmul weight, plus attention scores.

        ``2 * (layers * matmul weights + LM head)`` counts every multiply-add of the
        projections (the embedding lookup is free); ``4 * layers * q_size * context_len``
        adds QK^T and PV against ``context_len`` cached tokens (0 = weights only).

        Args:
            context_len: tokens the token attends to.

        Returns:
            FLOPs (multiply and add counted separately).
        """
        h = self.hidden_size
        per_layer = (h * self.q_size + 2 * h * self.kv_size + self.q_size * h
                     + 3 * h * self.intermediate_size)
        matmul = self.num_layers * per_layer + self.vocab_size * h
        attn = 4 * self.num_layers * self.q_size * context_len
        return 2 * matmul + attn

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict of every field."""
        d = dataclasses.asdict(self)
        d["eos_token_ids"] = list(self.eos_token_ids)
        return d


def _llama(name: str, **kw: Any) -> ModelConfig:
    kw.setdefault("head_dim", kw["hidden_size"] // kw["num_heads"])
    return ModelConfig(name=name, **kw)


#: RoPE of the long-context presets: 10,485,760 positions (Llama-3 base, llama3 scaling x1280)
_LONG_ROPE: dict[str, Any] = {
    "max_position_embeddings": 8192 * 1280, "rope_theta": 500000.0,
    "rope_scaling": {"rope_type": "llama3", "factor": 1280.0, "low_freq_factor": 1.0,
                     "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
}

# Presets carry random weights; their tokenizer is the byte tokenizer (BOS 256, EOS 257),
# so bos/eos ids are the byte tokenizer's, not the original checkpoints'.
PRESETS: dict[str, Callable[[], ModelConfig]] = {
    "tiny": lambda: _llama(
        "tiny", vocab_size=258, hidden_size=256, num_layers=4, num_heads=8, num_kv_heads=4,
        intermediate_size=688, max_position_embeddings=4096, tie_word_embeddings=True),
    "small": lambda: _llama(
        "small", vocab_size=32000, hidden_size=768, num_layers=12, num_heads=12,
        num_kv_heads=12, intermediate_size=2048, max_position_embeddings=4096,
        tie_word_embeddings=True),
    "llama-2-7b": lambda: _llama(
        "llama-2-7b", vocab_size=32000, hidden_size=4096, num_layers=32, num_heads=32,
        num_kv_heads=32, intermediate_size=11008, max_position_embeddings=4096),
    "llama-2-13b": lambda: _llama(
        "llama-2-13b", vocab_size=32000, hidden_size=5120, num_layers=40, num_heads=40,
        num_kv_heads=40, intermediate_size=13824, max_position_embeddings=4096),
    "llama-2-70b": lambda: _llama(
        "llama-2-70b", vocab_size=32000, hidden_size=8192, num_layers=80, num_heads=64,
        num_kv_heads=8, intermediate_size=28672, max_position_embeddings=4096),
    "llama-3-8b": lambda: _llama(
        "llama-3-8b", vocab_size=128256, hidden_size=4096, num_layers=32, num_heads=32,
        num_kv_heads=8, intermediate_size=14336, max_position_embeddings=8192,
        rope_theta=500000.0),
    "llama-3-70b": lambda: _llama(
        "llama-3-70b", vocab_size=128256, hidden_size=8192, num_layers=80, num_heads=64,
        num_kv_heads=8, intermediate_size=28672, max_position_embeddings=8192,
        rope_theta=500000.0),
    "llama-3.1-8b": lambda: _llama(
        "llama-3.1-8b", vocab_size=128256, hidden_size=4096, num_layers=32, num_heads=32,
        num_kv_heads=8, intermediate_size=14336, max_position_embeddings=131072,
        rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
    "mistral-7b": lambda: _llama(
        "mistral-7b", vocab_size=32000, hidden_size=4096, num_layers=32, num_heads=32,
        num_kv_heads=8, intermediate_size=14336, max_position_embeddings=32768,
        rope_theta=1000000.0, architecture="mistral"),
    "qwen2-7b": lambda: _llama(
        "qwen2-7b", vocab_size=152064, hidden_size=3584, num_layers=28, num_heads=28,
        num_kv_heads=4, intermediate_size=18944, max_position_embeddings=32768,
        rope_theta=1000000.0, rms_norm_eps=1e-6, attention_bias=True, architecture="qwen2"),
    # Long-context shapes (random weights): Llama-3 RoPE scaled as Mnemosyne scales Llama-3 to
    # 10M tokens -- llama3 scaling of an 8K-trained base by 1280 (8192 x 1280 = 10,485,760
    # positions). ``nano-long`` is small enough for a 32K-token prefill on a shared 2-core CPU.
    "tiny-long": lambda: _llama(
        "tiny-long", vocab_size=258, hidden_size=256, num_layers=4, num_heads=8, num_kv_heads=4,
        intermediate_size=688, tie_word_embeddings=True, **_LONG_ROPE),
    "small-long": lambda: _llama(
        "small-long", vocab_size=32000, hidden_size=768, num_layers=12, num_heads=12,
        num_kv_heads=4, intermediate_size=2048, tie_word_embeddings=True, **_LONG_ROPE),
    "nano-long": lambda: _llama(
        "nano-long", vocab_size=258, hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1,
        intermediate_size=172, tie_word_embeddings=True, **_LONG_ROPE),
}
"""Named model shapes (random weights). ``tiny`` is the CPU default."""


def get_preset(name: str) -> ModelConfig:
    """Return a fresh config for preset ``name``.

    Raises:
        ConfigError: for an unknown preset.
    """
    if name not in PRESETS:
        raise ConfigError(
            f"--model: unknown preset '{name}'; valid: {', '.join(PRESETS)} "
            "or a local checkpoint folder"
        )
    return PRESETS[name]()


# ----------------------------------------------------------------------------- RoPE


def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    """Inverse frequencies ``[head_dim/2]`` (float64) including rope scaling.

    Llama-3 scaling keeps high frequencies (wavelength < original_len / high_freq_factor),
    divides low frequencies (wavelength > original_len / low_freq_factor) by ``factor``,
    and interpolates linearly in ``original_len / wavelength`` between the two.

    Raises:
        ConfigError: for an unsupported rope scaling type.
    """
    d = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    rs = cfg.rope_scaling
    if not rs:
        return inv
    kind = rs.get("rope_type", rs.get("type", "default"))
    if kind == "default":
        return inv
    if kind == "linear":
        return inv / float(rs["factor"])
    if kind == "llama3":
        factor = float(rs["factor"])
        low, high = float(rs["low_freq_factor"]), float(rs["high_freq_factor"])
        orig = float(rs["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv
        # 0 at wavelen = orig/low (fully scaled), 1 at wavelen = orig/high (unscaled)
        smooth = ((orig / wavelen - low) / (high - low)).clamp(0.0, 1.0)
        return smooth * inv + (1.0 - smooth) * inv / factor
    raise ConfigError(
        f"model config '{cfg.name}': rope scaling type '{kind}' is not supported "
        "(supported: default, linear, llama3)"
    )


class RotaryEmbedding:
    """Rotations ``exp(i * pos * inv_freq)`` as complex64 ``[positions, head_dim/2]``,
    grown on demand and indexed once per batch.

    The model keeps q/k in the interleaved rotary layout (pairs ``(2i, 2i+1)`` rotate
    together): :func:`charbench.engine.weights.load_weights` permutes the rows of the q/k
    projections of Hugging Face checkpoints (which rotate halves ``(i, i + d/2)``) per
    head. Scores ``q.k`` are unchanged by that permutation, and RoPE becomes one complex
    multiply.
    """

    def __init__(self, cfg: ModelConfig, device: torch.device) -> None:
        self.inv_freq = rope_inv_freq(cfg)
        self.device = device
        self.freqs = torch.empty(0, cfg.head_dim // 2, dtype=torch.complex64, device=device)
        # long-context presets allow 10M positions (GBs of table): start at 64K, grow on demand
        self.ensure(min(cfg.max_position_embeddings, 1 << 16))

    def ensure(self, length: int) -> None:
        """Make the table cover positions ``[0, length)`` (grown at least 2x, so that decode
        steps past the table do not rebuild it every token)."""
        if length <= self.freqs.shape[0]:
            return
        length = max(length, 2 * self.freqs.shape[0])
        pos = torch.arange(length, dtype=torch.float64)
        angles = torch.outer(pos, self.inv_freq)  # float64 keeps large positions exact
        self.freqs = torch.polar(torch.ones_like(angles), angles).to(torch.complex64).to(self.device)

    def lookup(self, positions: torch.Tensor) -> torch.Tensor:
        """complex64 ``[T, 1, head_dim/2]`` for broadcasting over heads."""
        return self.freqs[positions].unsqueeze(1)


def apply_rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [T, heads, head_dim]`` (interleaved layout; last dim contiguous).

    Computed in float32 (complex64) and returned in ``x``'s dtype.
    """
    xf = x if x.dtype == torch.float32 else x.float()
    xc = torch.view_as_complex(xf.unflatten(-1, (-1, 2)))  # [T, H, D/2]
    out = torch.view_as_real(xc * freqs).flatten(-2)
    return out if out.dtype == x.dtype else out.to(x.dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm (one fused op; statistics in float32 for low-precision inputs)."""
    return F.rms_norm(x, (x.shape[-1],), weight, eps)


# ----------------------------------------------------------------------------- module

AllReduce = Callable[[torch.Tensor], None]
"""In-place sum of a tensor across tensor-parallel ranks (no-op at tp=1)."""

AttentionFn = Callable[..., torch.Tensor]
"""``attn(q [T,H,D], k [T,KV,D], v [T,KV,D], k_cache, v_cache, meta) -> [T,H,D]``."""


def _param(*shape: int, dtype: torch.dtype, device: torch.device) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape, dtype=dtype, device=device), requires_grad=False)


class DecoderLayer(nn.Module):
    """One pre-norm decoder layer holding this rank's shard of the weights.

    Weights: ``qkv_weight [(H_r + 2 KV_r) * D, hidden]``, ``o_weight [hidden, H_r * D]``,
    ``gate_up_weight [2 * I_r, hidden]``, ``down_weight [hidden, I_r]``, where ``_r`` means
    per tensor-parallel rank.
    """

    def __init__(self, cfg: ModelConfig, tp: int, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_heads = cfg.num_heads // tp
        self.n_kv = cfg.num_kv_heads // tp
        self.inter = cfg.intermediate_size // tp
        d, h = cfg.head_dim, cfg.hidden_size
        qkv_rows = (self.n_heads + 2 * self.n_kv) * d
        self.input_norm = _param(h, dtype=dtype, device=device)
        self.qkv_weight = _param(qkv_rows, h, dtype=dtype, device=device)
        self.qkv_bias = _param(qkv_rows, dtype=dtype, device=device) if cfg.attention_bias else None
        self.o_weight = _param(h, self.n_heads * d, dtype=dtype, device=device)
        self.o_bias = _param(h, dtype=dtype, device=device) if cfg.attention_out_bias else None
        self.post_norm = _param(h, dtype=dtype, device=device)
        self.gate_up_weight = _param(2 * self.inter, h, dtype=dtype, device=device)
        self.down_weight = _param(h, self.inter, dtype=dtype, device=device)

    def forward(
        self,
        x: torch.Tensor,
        freqs: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        attn: AttentionFn,
        meta: Any,
        all_reduce: AllReduce,
    ) -> torch.Tensor:
        """``x [T, hidden] -> [T, hidden]``; writes this layer's K/V for all T tokens."""
        t = x.shape[0]
        d, nh, nkv = self.cfg.head_dim, self.n_heads, self.n_kv
        eps = self.cfg.rms_norm_eps
        h = rms_norm(x, self.input_norm, eps)
        qkv = F.linear(h, self.qkv_weight, self.qkv_bias).view(t, nh + 2 * nkv, d)
        qk = apply_rope(qkv[:, : nh + nkv], freqs)  # [T, H_r + KV_r, D]
        q, k, v = qk[:, :nh], qk[:, nh:], qkv[:, nh + nkv:]
        o = attn(q, k, v, k_cache, v_cache, meta)  # [T, H_r, D]
        o = F.linear(o.reshape(t, nh * d), self.o_weight)
        all_reduce(o)
        if self.o_bias is not None:
            o += self.o_bias  # after the reduce: the bias is added once, not tp times
        x = x + o
        h = rms_norm(x, self.post_norm, eps)
        gu = F.linear(h, self.gate_up_weight)
        gate, up = gu.split(self.inter, dim=-1)
        m = F.linear(F.silu(gate) * up, self.down_weight)
        all_reduce(m)
        return x + m


def _no_reduce(_: torch.Tensor) -> None:
    return None


class LlamaModel(nn.Module):
    """The decoder: embedding, layers, final norm, LM head (one tensor-parallel shard).

    Args:
        cfg: model shape.
        dtype: parameter dtype.
        device: parameter device.
        tp: tensor-parallel degree; ``num_heads``, ``num_kv_heads`` and
            ``intermediate_size`` must divide by it.
        with_lm_head: False on tensor-parallel workers (only rank 0 computes logits).
        all_reduce: in-place sum across ranks (needed when ``tp > 1``).

    The parameters are allocated uninitialised; load them with
    :func:`charbench.engine.weights.load_weights`.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        dtype: torch.dtype,
        device: torch.device | str,
        tp: int = 1,
        with_lm_head: bool = True,
        all_reduce: AllReduce | None = None,
    ) -> None:
        super().__init__()
        check_tp_divisible(cfg, tp)
        device = torch.device(device)
        self.cfg, self.tp, self.dtype, self.device = cfg, tp, dtype, device
        self.all_reduce: AllReduce = all_reduce or _no_reduce
        h = cfg.hidden_size
        self.embed = _param(cfg.vocab_size, h, dtype=dtype, device=device)
        self.layers = nn.ModuleList(DecoderLayer(cfg, tp, dtype, device) for _ in range(cfg.num_layers))
        self.norm = _param(h, dtype=dtype, device=device)
        self.lm_head: nn.Parameter | None = None
        if with_lm_head and not cfg.tie_word_embeddings:
            self.lm_head = _param(cfg.vocab_size, h, dtype=dtype, device=device)
        self.with_lm_head = with_lm_head
        self.rope = RotaryEmbedding(cfg, device)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        attn: AttentionFn,
        meta: Any,
        max_position: int | None = None,
    ) -> torch.Tensor:
        """Run the layers over a packed batch.

        Args:
            input_ids: long ``[T]``.
            positions: long ``[T]``, each token's position in its sequence.
            kv_caches: per layer ``(k_cache, v_cache)``.
            attn: the attention function (see :data:`AttentionFn`).
            meta: attention metadata passed through to ``attn``.
            max_position: largest entry of ``positions`` if known (grows the RoPE table
                without a device sync).

        Returns:
            Hidden states ``[T, hidden]`` after the last layer (before the final norm).
        """
        if max_position is not None:
            self.rope.ensure(max_position + 1)
        freqs = self.rope.lookup(positions)
        x = F.embedding(input_ids, self.embed)
        for layer, (kc, vc) in zip(self.layers, kv_caches):
            x = layer(x, freqs, kc, vc, attn, meta, self.all_reduce)
        return x

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm and LM head for selected rows: ``[n, hidden] -> float32 [n, vocab]``."""
        if not self.with_lm_head:
            raise RuntimeError("this shard has no LM head (tensor-parallel worker)")
        head = self.embed if self.lm_head is None else self.lm_head
        h = rms_norm(hidden, self.norm, self.cfg.rms_norm_eps)
        return F.linear(h, head).float()


def check_tp_divisible(cfg: ModelConfig, tp: int) -> None:
    """Check that ``tp`` divides the head counts and the MLP width.

    Raises:
        ConfigError: naming the shape that does not divide.
    """
    if tp < 1:
        raise ConfigError(f"--tp: must be >= 1, got {tp}")
    for name in ("num_heads", "num_kv_heads", "intermediate_size"):
        value = getattr(cfg, name)
        if value % tp:
            raise ConfigError(
                f"--tp {tp}: model '{cfg.name}' has {name}={value}, not divisible by {tp}; "
                "choose a tp that divides it"
            )
