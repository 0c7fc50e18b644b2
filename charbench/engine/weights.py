"""Model weights: local Hugging Face checkpoints (safetensors) or seeded random weights.

Both sources hand out tensors by their Hugging Face names
(``model.layers.0.self_attn.q_proj.weight``, ...), optionally a slice along one dim, so one
loader fills a (tensor-parallel shard of a) :class:`~charbench.engine.model.LlamaModel`
from either. A checkpoint is read by path only -- nothing is ever downloaded -- from
``config.json`` plus ``model.safetensors``, or shards listed in
``model.safetensors.index.json``, or every ``*.safetensors`` file in the folder. With
safetensors' lazy slices a tensor-parallel rank reads only its shard.

Random weights (``weights_kind = "random"``) are drawn per tensor from a generator seeded
by ``(seed, tensor name)``: independent of load order and of the tensor-parallel degree,
so tp=2 shards are exact slices of the tp=1 model. They depend on the device type (the
CPU and CUDA generators differ). Norm weights are 1, everything else N(0, 0.02).

Example::

    cfg = config_from_checkpoint("/models/Llama-2-7b-hf")
    load_weights(model, SafetensorsSource("/models/Llama-2-7b-hf"), tp_rank=0, tp_size=1)
"""

from __future__ import annotations

import dataclasses
import json
import zlib
from pathlib import Path
from typing import Any, Protocol

import torch

from charbench.engine.model import LlamaModel, ModelConfig
from charbench.errors import ConfigError

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
INIT_STD = 0.02
"""Standard deviation of random weights."""


# ----------------------------------------------------------------------------- config


def _rope_from_hf(raw: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """RoPE base and scaling from either the old (``rope_theta``/``rope_scaling``) or the
    transformers-5 (``rope_parameters``) layout of config.json."""
    params = raw.get("rope_parameters")
    if isinstance(params, dict):
        theta = float(params.get("rope_theta", raw.get("rope_theta", 10000.0)))
        kind = params.get("rope_type", params.get("type", "default"))
        scaling = None if kind == "default" else {k: v for k, v in params.items() if k != "rope_theta"}
        return theta, scaling
    theta = float(raw.get("rope_theta", 10000.0))
    scaling = raw.get("rope_scaling")
    if isinstance(scaling, dict):
        scaling = dict(scaling)
        scaling.setdefault("rope_type", scaling.get("type", "default"))
        if scaling["rope_type"] == "default":
            scaling = None
    else:
        scaling = None
    return theta, scaling


def token_ids(value: Any) -> tuple[int, ...]:
    """Token ids from a Hugging Face ``*_token_id`` field: an int, a list of ints or null.

    Args:
        value: the field's JSON value.

    Raises:
        ValueError: the value is neither (e.g. a string).
    """
    if value is None:
        return ()
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in items):
        raise ValueError(f"token id {value!r} is not an int or a list of ints")
    return tuple(items)


def merge_eos_ids(cfg: ModelConfig, extra: tuple[int, ...]) -> ModelConfig:
    """``cfg`` with ``extra`` end-of-sequence ids appended (order kept, no duplicates).

    The primary ``eos_token_id`` stays config.json's; it becomes the first extra id only
    when config.json has none (``-1``).
    """
    known = [e for e in cfg.eos_token_ids if e != -1]
    ids = tuple(dict.fromkeys(known + list(extra)))
    if not ids:
        return cfg
    primary = cfg.eos_token_id if cfg.eos_token_id != -1 else ids[0]
    return dataclasses.replace(cfg, eos_token_id=primary, eos_token_ids=ids)


def _read_json_object(path: Path, model: str | Path) -> dict[str, Any]:
    """A checkpoint JSON file that must hold an object.

    Raises:
        ConfigError: unreadable, not JSON, or not an object.
    """
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"--model {model}: cannot read {path.name} ({exc})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"--model {model}: {path.name} is not a JSON object")
    return raw


def generation_eos_ids(folder: str | Path) -> tuple[int, ...]:
    """End-of-sequence ids of ``generation_config.json`` (what Hugging Face ``generate``
    stops on), or ``()`` when the checkpoint has no such file or field.

    Raises:
        ConfigError: the file exists but is unreadable or its ``eos_token_id`` malformed.
    """
    path = Path(folder) / "generation_config.json"
    if not path.is_file():
        return ()
    raw = _read_json_object(path, folder)
    try:
        return token_ids(raw.get("eos_token_id"))
    except ValueError as exc:
        raise ConfigError(f"--model {folder}: generation_config.json has a malformed eos_token_id ({exc})") from None


def config_from_hf(raw: dict[str, Any], name: str) -> ModelConfig:
    """Build a :class:`ModelConfig` from a Hugging Face ``config.json`` dict.

    Args:
        raw: the parsed config.json.
        name: name to give the config (the folder).

    Raises:
        ConfigError: unsupported architecture or options.
    """
    mtype = raw.get("model_type", "llama")
    if mtype not in SUPPORTED_MODEL_TYPES:
        raise ConfigError(
            f"--model {name}: model_type '{mtype}' is not supported; supported: "
            f"{', '.join(SUPPORTED_MODEL_TYPES)} (Llama-family decoders)"
        )
    if raw.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"--model {name}: hidden_act '{raw['hidden_act']}' is not supported (silu)")
    if raw.get("mlp_bias"):
        raise ConfigError(f"--model {name}: mlp_bias=true is not supported")
    heads = int(raw["num_attention_heads"])
    hidden = int(raw["hidden_size"])
    theta, scaling = _rope_from_hf(raw)
    eos_ids = token_ids(raw.get("eos_token_id"))
    bos = raw.get("bos_token_id")
    if mtype == "qwen2":
        bias, out_bias = True, False
    else:
        bias = out_bias = bool(raw.get("attention_bias", False))
    max_pos = int(raw.get("max_position_embeddings", 4096))
    window = raw.get("sliding_window")
    if mtype == "qwen2" and not raw.get("use_sliding_window", False):
        window = None
    if window is not None:
        window = int(window)
        max_pos = min(max_pos, window)
    return ModelConfig(
        name=name,
        vocab_size=int(raw["vocab_size"]),
        hidden_size=hidden,
        num_layers=int(raw["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(raw.get("num_key_value_heads") or heads),
        head_dim=int(raw.get("head_dim") or hidden // heads),
        intermediate_size=int(raw["intermediate_size"]),
        max_position_embeddings=max_pos,
        rope_theta=theta,
        rope_scaling=scaling,
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        attention_bias=bias,
        attention_out_bias=out_bias,
        bos_token_id=int(bos) if bos is not None else None,
        eos_token_id=eos_ids[0] if eos_ids else -1,
        eos_token_ids=eos_ids or (-1,),
        architecture=mtype,
        sliding_window=window,
    )


def config_from_checkpoint(path: str | Path) -> ModelConfig:
    """Read ``config.json`` of a local checkpoint folder.

    End-of-sequence ids are those of config.json plus those of ``generation_config.json``
    (transformers 5 checkpoints may list the extra ones, e.g. Llama-3's ``<|eot_id|>``,
    only there); the tokenizer's own EOS is added by the engine.

    Raises:
        ConfigError: missing or unsupported config.
    """
    folder = Path(path)
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise ConfigError(f"--model {path}: no config.json in that folder")
    raw = _read_json_object(cfg_file, path)
    try:
        return merge_eos_ids(config_from_hf(raw, str(folder)), generation_eos_ids(folder))
    except KeyError as exc:  # a required field is absent: the checkpoint, not charbench, is incomplete
        raise ConfigError(f"--model {path}: config.json has no {exc.args[0]!r}; is it a Hugging Face Llama-family checkpoint?") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"--model {path}: config.json has a malformed value ({exc})") from None


# ----------------------------------------------------------------------------- sources


class WeightSource(Protocol):
    """Tensors by Hugging Face name, optionally one slice ``[start, stop)`` along ``dim``."""

    def has(self, name: str) -> bool:
        """Whether the source holds ``name``."""
        ...

    def get(
        self, name: str, shape: tuple[int, ...], dim: int = 0,
        start: int | None = None, stop: int | None = None,
    ) -> torch.Tensor:
        """The tensor (or its slice); ``shape`` is the full expected shape."""
        ...


class SafetensorsSource:
    """Reads tensors from the ``*.safetensors`` files of a checkpoint folder.

    Args:
        folder: the checkpoint folder.

    Raises:
        ConfigError: no safetensors files, or an index naming missing files.
    """

    def __init__(self, folder: str | Path) -> None:
        from safetensors import safe_open

        self._safe_open = safe_open
        self.folder = Path(folder)
        index = self.folder / "model.safetensors.index.json"
        self.file_of: dict[str, Path] = {}
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            for name, fname in weight_map.items():
                self.file_of[name] = self.folder / fname
            missing = sorted({str(p) for p in self.file_of.values() if not p.is_file()})
            if missing:
                raise ConfigError(f"--model {folder}: index names missing files {missing[:3]}")
        else:
            files = sorted(self.folder.glob("*.safetensors"))
            if not files:
                raise ConfigError(
                    f"--model {folder}: no *.safetensors files (pytorch .bin checkpoints are "
                    "not supported; convert them to safetensors)"
                )
            for f in files:
                with safe_open(str(f), framework="pt", device="cpu") as h:
                    for name in h.keys():
                        self.file_of[name] = f
        self._handles: dict[Path, Any] = {}

    def has(self, name: str) -> bool:
        """Whether a file holds ``name``."""
        return name in self.file_of

    def _handle(self, f: Path) -> Any:
        if f not in self._handles:
            self._handles[f] = self._safe_open(str(f), framework="pt", device="cpu")
        return self._handles[f]

    def get(
        self, name: str, shape: tuple[int, ...], dim: int = 0,
        start: int | None = None, stop: int | None = None,
    ) -> torch.Tensor:
        """Read ``name`` (only the slice when one is given).

        Raises:
            ConfigError: the tensor is missing or has another shape.
        """
        if name not in self.file_of:
            raise ConfigError(f"--model {self.folder}: checkpoint has no tensor '{name}'")
        sl = self._handle(self.file_of[name]).get_slice(name)
        got = tuple(sl.get_shape())
        if got != tuple(shape):
            raise ConfigError(
                f"--model {self.folder}: tensor '{name}' has shape {got}, config.json implies "
                f"{tuple(shape)}"
            )
        if start is None:
            return sl[:]
        idx = [slice(None)] * len(shape)
        idx[dim] = slice(start, stop)
        return sl[tuple(idx)]

    def close(self) -> None:
        """Drop the open file handles."""
        self._handles.clear()


class RandomSource:
    """Seeded random tensors (see the module docstring).

    Args:
        seed: base seed.
        device: generator device (tensors are drawn there).
    """

    def __init__(self, seed: int, device: torch.device | str) -> None:
        self.seed = int(seed)
        self.device = torch.device(device)

    def has(self, name: str) -> bool:
        """Every name exists."""
        return True

    def get(
        self, name: str, shape: tuple[int, ...], dim: int = 0,
        start: int | None = None, stop: int | None = None,
    ) -> torch.Tensor:
        """Draw the full tensor (so slices agree across tp degrees) and cut the slice."""
        if name.endswith("norm.weight"):
            full = torch.ones(shape, device=self.device)
        else:
            gen = torch.Generator(device=self.device)
            gen.manual_seed((self.seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63)
            full = torch.empty(shape, device=self.device).normal_(0.0, INIT_STD, generator=gen)
        if start is None:
            return full
        return full.narrow(dim, start, stop - start)


# ----------------------------------------------------------------------------- loading


def interleave_rope_rows(w: torch.Tensor, num_heads: int, head_dim: int) -> torch.Tensor:
    """Reorder each head's rows from the half-split rotary layout of Hugging Face
    checkpoints (row ``h*d/2 + i`` pairs with ``(h+1)*d/2 + i`` within a head) to the
    interleaved layout the model uses (rows ``2i, 2i+1`` pair up).

    Args:
        w: ``[num_heads * head_dim, ...]`` q or k projection weight or bias.
        num_heads: heads in ``w``.
        head_dim: per-head width.
    """
    rest = w.shape[1:]
    return w.reshape(num_heads, 2, head_dim // 2, *rest).transpose(1, 2).reshape(num_heads * head_dim, *rest)


def load_weights(model: LlamaModel, source: WeightSource, tp_rank: int = 0, tp_size: int = 1) -> None:
    """Fill ``model``'s parameters (this rank's shard) from ``source``.

    Column-parallel (split along output rows): q/k/v heads, gate/up columns. q/k rows are
    reordered to the interleaved rotary layout (:func:`interleave_rope_rows`).
    Row-parallel (split along input columns): o_proj, down_proj. Replicated: embeddings,
    norms, LM head, output bias.

    Args:
        model: a model built with ``tp=tp_size``.
        source: where tensors come from.
        tp_rank: this rank.
        tp_size: tensor-parallel degree.

    Raises:
        ConfigError: a tensor is missing or mis-shaped.
    """
    cfg = model.cfg
    h, d = cfg.hidden_size, cfg.head_dim
    nh, nkv, inter = cfg.num_heads // tp_size, cfg.num_kv_heads // tp_size, cfg.intermediate_size // tp_size
    r = tp_rank

    def put(param: torch.Tensor, value: torch.Tensor) -> None:
        param.data.copy_(value.to(device=param.device, dtype=param.dtype))

    def rows(name: str, full_rows: int, per_rank: int, cols: int | None = None) -> torch.Tensor:
        shape = (full_rows,) if cols is None else (full_rows, cols)
        return source.get(name, shape, 0, r * per_rank, (r + 1) * per_rank)

    with torch.no_grad():
        put(model.embed, source.get("model.embed_tokens.weight", (cfg.vocab_size, h)))
        for i, layer in enumerate(model.layers):
            p = f"model.layers.{i}."
            a = p + "self_attn."
            put(layer.input_norm, source.get(p + "input_layernorm.weight", (h,)))
            put(layer.post_norm, source.get(p + "post_attention_layernorm.weight", (h,)))
            q = interleave_rope_rows(rows(a + "q_proj.weight", cfg.q_size, nh * d, h), nh, d)
            k = interleave_rope_rows(rows(a + "k_proj.weight", cfg.kv_size, nkv * d, h), nkv, d)
            v = rows(a + "v_proj.weight", cfg.kv_size, nkv * d, h)
            put(layer.qkv_weight, torch.cat([q, k, v.to(q.device)], dim=0))
            if layer.qkv_bias is not None:
                qb = interleave_rope_rows(rows(a + "q_proj.bias", cfg.q_size, nh * d), nh, d)
                kb = interleave_rope_rows(rows(a + "k_proj.bias", cfg.kv_size, nkv * d), nkv, d)
                vb = rows(a + "v_proj.bias", cfg.kv_size, nkv * d)
                put(layer.qkv_bias, torch.cat([qb, kb, vb]))
            put(layer.o_weight, source.get(a + "o_proj.weight", (h, cfg.q_size), 1, r * nh * d, (r + 1) * nh * d))
            if layer.o_bias is not None:
                put(layer.o_bias, source.get(a + "o_proj.bias", (h,)))
            m = p + "mlp."
            gate = rows(m + "gate_proj.weight", cfg.intermediate_size, inter, h)
            up = rows(m + "up_proj.weight", cfg.intermediate_size, inter, h)
            put(layer.gate_up_weight, torch.cat([gate, up], dim=0))
            put(layer.down_weight, source.get(m + "down_proj.weight", (h, cfg.intermediate_size),
                                              1, r * inter, (r + 1) * inter))
        put(model.norm, source.get("model.norm.weight", (h,)))
        if model.lm_head is not None:
            put(model.lm_head, source.get("lm_head.weight", (cfg.vocab_size, h)))
