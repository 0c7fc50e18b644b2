"""Tokenizers: a byte-level one for presets, ``tokenizer.json`` for checkpoints.

Both expose ``encode(text, add_bos=True) -> list[int]``, ``decode(ids) -> str``,
``eos_token_id``, ``bos_token_id`` (None when the model has none) and ``vocab_size``::

    tok = ByteTokenizer(vocab_size=258)
    tok.encode("hi")            # [256, 104, 105]
    tok.decode([104, 105, 257]) # "hi" (special tokens are dropped)

    tok = load_tokenizer("/models/Llama-2-7b-hf", model_cfg)   # reads tokenizer.json

Checkpoint chat templates are found where transformers 5 looks (:func:`read_chat_template`);
without one, ``chat_template`` is None and the server uses its fallback template (it says
so in its start-up log and in ``/v1/models``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Protocol

from charbench.engine.model import ModelConfig
from charbench.errors import ConfigError

BYTE_BOS = 256
BYTE_EOS = 257
_PRINTABLE = "".join(chr(c) for c in range(0x21, 0x7F))
CHAT_TEMPLATE_FILE = "chat_template.jinja"
CHAT_TEMPLATE_DIR = "additional_chat_templates"
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")
"""Special-token strings a chat template sees (transformers passes its special_tokens_map)."""

log = logging.getLogger(__name__)


class Tokenizer(Protocol):
    """What the engine needs from a tokenizer."""

    eos_token_id: int
    bos_token_id: int | None
    vocab_size: int
    chat_template: str | None
    chat_template_origin: str
    special_tokens: dict[str, str]

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        """Text to token ids (BOS first when ``add_bos`` and the model has one)."""
        ...

    def decode(self, ids: list[int]) -> str:
        """Token ids to text; special tokens are skipped."""
        ...


class ByteTokenizer:
    """UTF-8 bytes as tokens 0..255, BOS 256, EOS 257.

    Preset models may have a larger vocabulary than 258 (``small`` has 32000, the
    llama shapes their real sizes). Random weights generate any id; an id >= 258 decodes
    to one printable ASCII character, ``chr(0x21 + (id - 258) % 94)``, so generated text
    has one visible character per token. Such text does not re-encode to the same ids.

    Args:
        vocab_size: the model's vocabulary (>= 258).
    """

    def __init__(self, vocab_size: int = 258) -> None:
        if vocab_size < 258:
            raise ConfigError(f"byte tokenizer needs a vocabulary of >= 258 tokens, got {vocab_size}")
        self.vocab_size = vocab_size
        self.bos_token_id: int | None = BYTE_BOS
        self.eos_token_id = BYTE_EOS
        # presets have no chat template: the server's fallback one is theirs by design
        self.chat_template: str | None = None
        self.chat_template_origin = "a preset (byte tokenizer) has no chat template"
        self.special_tokens: dict[str, str] = {}

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        """UTF-8 bytes of ``text``, BOS first when ``add_bos``."""
        ids = list(text.encode("utf-8"))
        return [BYTE_BOS] + ids if add_bos else ids

    def decode(self, ids: list[int]) -> str:
        """Bytes back to text (invalid UTF-8 becomes U+FFFD); BOS/EOS are dropped."""
        out = bytearray()
        for i in ids:
            if 0 <= i < 256:
                out.append(i)
            elif i >= 258:
                out.append(ord(_PRINTABLE[(i - 258) % len(_PRINTABLE)]))
        return out.decode("utf-8", errors="replace")


def read_chat_template(folder: str | Path, tokenizer_config: dict[str, Any]) -> tuple[str | None, str]:
    """The checkpoint's default chat template, found as transformers 5 finds it.

    ``chat_template.jinja`` and ``additional_chat_templates/*.jinja`` (named templates)
    take priority over ``tokenizer_config.json``'s ``chat_template`` (a string, or the
    legacy list of ``{"name", "template"}``). With several templates the one named
    ``default`` is used (``chat_template.jinja`` is that one).

    Args:
        folder: the checkpoint folder.
        tokenizer_config: the parsed tokenizer_config.json (``{}`` when absent).

    Returns:
        ``(template, where)``: the template (None when there is no default one) and where
        it came from, or why there is none (for logs).
    """
    folder = Path(folder)
    files: dict[str, str] = {}
    main = folder / CHAT_TEMPLATE_FILE
    if main.is_file():
        files["default"] = main.read_text(encoding="utf-8")
    extra = folder / CHAT_TEMPLATE_DIR
    if extra.is_dir():
        for f in sorted(extra.glob("*.jinja")):
            files.setdefault(f.name.removesuffix(".jinja"), f.read_text(encoding="utf-8"))
    if files:
        if "default" in files:
            where = CHAT_TEMPLATE_FILE if main.is_file() else f"{CHAT_TEMPLATE_DIR}/default.jinja"
            return files["default"], where
        return None, f"{CHAT_TEMPLATE_DIR}/ has named templates {sorted(files)} but no default one"
    raw = tokenizer_config.get("chat_template")
    if isinstance(raw, str):
        return raw, "tokenizer_config.json"
    if isinstance(raw, list):
        named = {t.get("name"): t.get("template") for t in raw if isinstance(t, dict)}
        if isinstance(named.get("default"), str):
            return named["default"], "tokenizer_config.json (template 'default')"
        return None, f"tokenizer_config.json has named templates {sorted(map(str, named))} but no default one"
    return None, f"no {CHAT_TEMPLATE_FILE} and no chat_template in tokenizer_config.json"


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or ``{"content": ...}``."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _special_tokens(folder: Path, tokenizer_config: dict[str, Any]) -> dict[str, str]:
    """Special-token strings from tokenizer_config.json, else legacy special_tokens_map.json."""
    legacy: dict[str, Any] = {}
    path = folder / "special_tokens_map.json"
    if path.is_file():
        legacy = _read_optional_json(path)
    out: dict[str, str] = {}
    for key in SPECIAL_TOKEN_KEYS:
        text = _token_text(tokenizer_config[key]) if key in tokenizer_config else _token_text(legacy.get(key))
        if text is not None:
            out[key] = text
    return out


def _read_optional_json(path: Path) -> dict[str, Any]:
    """A JSON object file, or ``{}`` when it is unreadable (tokenizer metadata is optional)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        log.warning("%s is unreadable; ignoring it", path)
        return {}
    return raw if isinstance(raw, dict) else {}


class HFTokenizer:
    """A ``tokenizer.json`` through the ``tokenizers`` library.

    BOS handling: the post-processor in tokenizer.json is bypassed
    (``add_special_tokens=False``) and BOS is prepended here when ``add_bos`` is True, the
    model has a BOS id, and ``tokenizer_config.json`` does not say ``add_bos_token: false``
    or ``bos_token: null``.

    ``eos_token_id`` is the tokenizer's own EOS (``eos_token`` of tokenizer_config.json)
    when tokenizer.json knows it, else the model config's; the engine stops on it and on
    the config's ids. ``chat_template`` is the default template (:func:`read_chat_template`)
    or None; ``special_tokens`` the strings a template sees as ``bos_token``, ``eos_token``...

    Args:
        folder: checkpoint folder with ``tokenizer.json``.
        model_cfg: the model's config (BOS/EOS ids, vocabulary size).

    Raises:
        ConfigError: ``tokenizer.json`` is missing or unreadable.
    """

    def __init__(self, folder: str | Path, model_cfg: ModelConfig) -> None:
        from tokenizers import Tokenizer as _Tok

        folder = Path(folder)
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise ConfigError(
                f"--model {folder}: no tokenizer.json (sentencepiece-only checkpoints are not "
                "supported; save the tokenizer with a recent transformers to get tokenizer.json)"
            )
        try:
            self._tok = _Tok.from_file(str(path))
        except Exception as exc:  # tokenizers raises plain Exceptions
            raise ConfigError(f"--model {folder}: cannot load tokenizer.json ({exc})") from exc
        tc_path = folder / "tokenizer_config.json"
        tc = _read_optional_json(tc_path) if tc_path.is_file() else {}
        add_bos = not (tc.get("add_bos_token") is False or ("bos_token" in tc and tc["bos_token"] is None))
        self.bos_token_id: int | None = model_cfg.bos_token_id if add_bos else None
        self.special_tokens: dict[str, str] = _special_tokens(folder, tc)
        # the checkpoint's Jinja chat template (the server renders it for /v1/chat/completions)
        self.chat_template, self.chat_template_origin = read_chat_template(folder, tc)
        own_eos = self.special_tokens.get("eos_token")
        own_eos_id = self._tok.token_to_id(own_eos) if own_eos is not None else None
        self.eos_token_id: int = own_eos_id if own_eos_id is not None else model_cfg.eos_token_id
        # the model's logits width: ids the model can take and produce
        self.vocab_size = model_cfg.vocab_size

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        """Token ids of ``text``; BOS first when wanted (see the class docstring)."""
        ids = self._tok.encode(text, add_special_tokens=False).ids
        if add_bos and self.bos_token_id is not None:
            return [self.bos_token_id] + ids
        return ids

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids`` with special tokens skipped."""
        return self._tok.decode(list(ids), skip_special_tokens=True)


def load_tokenizer(
    model: str, model_cfg: ModelConfig, checkpoint: bool | None = None
) -> ByteTokenizer | HFTokenizer:
    """The tokenizer for a preset (bytes) or a checkpoint folder (tokenizer.json).

    Args:
        model: preset name or checkpoint folder.
        model_cfg: the resolved model config.
        checkpoint: whether ``model`` is a checkpoint folder (None: it is one if it is a
            folder).
    """
    if checkpoint if checkpoint is not None else Path(model).is_dir():
        return HFTokenizer(model, model_cfg)
    return ByteTokenizer(model_cfg.vocab_size)
