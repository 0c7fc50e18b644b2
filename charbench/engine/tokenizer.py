"""Tokenizers: a byte-level one for presets, ``tokenizer.json`` for checkpoints.

Both expose ``encode(text, add_bos=True) -> list[int]``, ``decode(ids) -> str``,
``eos_token_id``, ``bos_token_id`` (None when the model has none) and ``vocab_size``::

    tok = ByteTokenizer(vocab_size=258)
    tok.encode("hi")            # [256, 104, 105]
    tok.decode([104, 105, 257]) # "hi" (special tokens are dropped)

    tok = load_tokenizer("/models/Llama-2-7b-hf", model_cfg)   # reads tokenizer.json
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

from charbench.engine.model import ModelConfig
from charbench.errors import ConfigError

BYTE_BOS = 256
BYTE_EOS = 257
_PRINTABLE = "".join(chr(c) for c in range(0x21, 0x7F))


class Tokenizer(Protocol):
    """What the engine needs from a tokenizer."""

    eos_token_id: int
    bos_token_id: int | None
    vocab_size: int

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


class HFTokenizer:
    """A ``tokenizer.json`` through the ``tokenizers`` library.

    BOS handling: the post-processor in tokenizer.json is bypassed
    (``add_special_tokens=False``) and BOS is prepended here when ``add_bos`` is True, the
    model has a BOS id, and ``tokenizer_config.json`` does not say ``add_bos_token: false``
    or ``bos_token: null``.

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
        add_bos = True
        bos: int | None = model_cfg.bos_token_id
        tc_path = folder / "tokenizer_config.json"
        tc: dict = {}
        if tc_path.is_file():
            try:
                tc = json.loads(tc_path.read_text())
            except (OSError, json.JSONDecodeError):
                tc = {}
            if tc.get("add_bos_token") is False or ("bos_token" in tc and tc["bos_token"] is None):
                add_bos = False
        self.bos_token_id = bos if add_bos else None
        # the checkpoint's Jinja chat template (the server renders it for /v1/chat/completions)
        template = tc.get("chat_template")
        self.chat_template: str | None = template if isinstance(template, str) else None
        self.eos_token_id = model_cfg.eos_token_id
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
