"""Prompts of exact token counts, built with the target's tokenizer.

Two forms:

* ``ids``: a list of random token ids (no special tokens). Exact by construction; sent as
  the OpenAI ``prompt`` token array (the built-in engine and vLLM accept it).
* ``text``: random ids decoded to text and re-encoded until the count is exact (tokenizers
  merge across boundaries, so decode/encode is iterated; the final count is measured, and
  a prompt that could not be made exact says so). Needed for chat APIs.

Without any tokenizer (a URL target whose tokenizer is unknown), prompts are built from
common one-token English words; their token counts are then approximate and the real
counts come from the server's ``usage`` (recorded as such)::

    tok = as_tokenizer(engine.tokenizer)
    specs = build_prompts(tok, [128, 64], form="ids", seed=0)
    specs[0].prompt_tokens == 128
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from charbench.errors import ConfigError

PROMPT_FORMS: tuple[str, ...] = ("auto", "ids", "text")

# Short, frequent English words: one token each in the common BPE vocabularies (GPT-2,
# Llama, Mistral) when preceded by a space, so N words are close to N tokens.
_WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at "
    "which but have an they you were her she there one all we their has been if more when "
    "will would who so no out up into do than can time some could them other these may "
    "first then only its new about two also like over such after most made any many well "
    "back where much good year way see work long day great old life world down own just"
).split()


class TokenizerAdapter:
    """A uniform view over the engine's tokenizer or a ``tokenizers.Tokenizer``.

    Attributes:
        vocab_size: ids are in [0, vocab_size).
        special_ids: ids never used in random prompts (BOS, EOS, PAD, ...).
        adds_bos: the target prepends one BOS token to text prompts.
        source: where the tokenizer came from (recorded with the run).
    """

    def __init__(self, encode: Any, decode: Any, vocab_size: int, special_ids: set[int], adds_bos: bool, source: str) -> None:
        self._encode = encode
        self._decode = decode
        self.vocab_size = int(vocab_size)
        self.special_ids = set(special_ids)
        self.adds_bos = adds_bos
        self.source = source

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens."""
        return list(self._encode(text))

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids``."""
        return str(self._decode(list(ids)))

    def count_text_prompt(self, text: str) -> int:
        """Tokens the target sees for a text prompt (content + BOS when it adds one)."""
        return len(self.encode(text)) + (1 if self.adds_bos else 0)


def as_tokenizer(tok: Any, source: str = "engine") -> TokenizerAdapter:
    """Wrap the built-in engine's tokenizer (``encode(text, add_bos=...)``) or a HF one.

    Raises:
        ConfigError: the object has no usable encode/decode.
    """
    if isinstance(tok, TokenizerAdapter):
        return tok
    specials: set[int] = set()
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        v = getattr(tok, name, None)
        if isinstance(v, int):
            specials.add(v)
    # tokenizers.Tokenizer (HF fast tokenizer file)
    if hasattr(tok, "get_vocab_size") and hasattr(tok, "encode") and not hasattr(tok, "vocab_size"):
        added = getattr(tok, "get_added_tokens_decoder", None)
        if callable(added):
            specials |= {int(i) for i in added()}
        return TokenizerAdapter(
            lambda t: tok.encode(t, add_special_tokens=False).ids,
            lambda ids: tok.decode(ids),
            tok.get_vocab_size(),
            specials,
            adds_bos=False,
            source=source,
        )
    if hasattr(tok, "encode") and hasattr(tok, "decode") and hasattr(tok, "vocab_size"):
        def enc(text: str) -> list[int]:
            try:
                return list(tok.encode(text, add_bos=False))
            except TypeError:  # HF transformers tokenizers
                return list(tok.encode(text, add_special_tokens=False))

        bos = getattr(tok, "bos_token_id", None)
        probe_bos = False
        try:
            probe_bos = isinstance(bos, int) and list(tok.encode("a", add_bos=True))[:1] == [bos]
        except TypeError:
            probe_bos = False
        return TokenizerAdapter(enc, lambda ids: tok.decode(ids), int(tok.vocab_size), specials, adds_bos=probe_bos, source=source)
    raise ConfigError(f"tokenizer from {source}: needs encode/decode and a vocabulary size; got {type(tok).__name__}")


def load_tokenizer_file(path: str) -> TokenizerAdapter:
    """Load a HF ``tokenizer.json`` (or a folder holding one) with the ``tokenizers`` package.

    Raises:
        ConfigError: the file is missing or not a tokenizer.
    """
    from pathlib import Path

    p = Path(path)
    if p.is_dir():
        p = p / "tokenizer.json"
    if not p.is_file():
        raise ConfigError(f"--tokenizer: {path} is not a tokenizer.json file or a folder holding one")
    try:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(p))
    except Exception as exc:
        raise ConfigError(f"--tokenizer: cannot load {p} ({type(exc).__name__}: {exc})") from exc
    return as_tokenizer(tok, source=str(p))


@dataclass
class Prompt:
    """One built prompt.

    Attributes:
        prompt: text or token ids, as sent.
        target_tokens: the requested prompt length.
        prompt_tokens: the length the target will see (None when no tokenizer is known).
        exact: ``prompt_tokens == target_tokens`` was verified with the tokenizer.
    """

    prompt: str | list[int]
    target_tokens: int
    prompt_tokens: int | None
    exact: bool


def _random_ids(rng: np.random.Generator, n: int, tok: TokenizerAdapter) -> list[int]:
    # Draw from the bulk of the vocabulary; re-draw the rare special ids.
    ids = rng.integers(0, tok.vocab_size, size=n)
    if tok.special_ids:
        bad = np.isin(ids, list(tok.special_ids))
        while bad.any():
            ids[bad] = rng.integers(0, tok.vocab_size, size=int(bad.sum()))
            bad = np.isin(ids, list(tok.special_ids))
    return [int(i) for i in ids]


def _text_prompt(rng: np.random.Generator, n: int, tok: TokenizerAdapter, max_iter: int = 8) -> Prompt:
    content = max(n - (1 if tok.adds_bos else 0), 1)
    # Words decode/encode stably; random ids alone can produce byte soup that re-tokenizes badly.
    words = [_WORDS[i] for i in rng.integers(0, len(_WORDS), size=content)]
    text = " " + " ".join(words)
    for _ in range(max_iter):
        ids = tok.encode(text)
        if len(ids) == content:
            break
        if len(ids) > content:
            text = tok.decode(ids[:content])
        else:
            extra = [_WORDS[i] for i in rng.integers(0, len(_WORDS), size=content - len(ids))]
            text = text + " " + " ".join(extra)
    count = tok.count_text_prompt(text)
    return Prompt(text, n, count, count == n)


def build_prompts(tok: TokenizerAdapter | None, lengths: list[int] | np.ndarray, form: str = "ids", seed: int = 0) -> list[Prompt]:
    """One prompt per requested length.

    Args:
        tok: the target's tokenizer, or None when unknown (approximate word prompts).
        lengths: prompt tokens per request.
        form: ``ids`` or ``text``.
        seed: generator seed (prompts are unique per request, which also defeats prefix caches).

    Raises:
        ConfigError: ``ids`` without a tokenizer, or an unknown form.
    """
    if form not in ("ids", "text"):
        raise ConfigError(f"--prompt-format: unknown form {form!r}; valid: {', '.join(PROMPT_FORMS)}")
    rng = np.random.default_rng(seed)
    out: list[Prompt] = []
    for n in (int(x) for x in lengths):
        if n < 1:
            raise ConfigError(f"prompt length must be >= 1, got {n}")
        if tok is None:
            if form == "ids":
                raise ConfigError("--prompt-format ids needs the target's tokenizer; pass --tokenizer PATH (a tokenizer.json) or use --prompt-format text")
            words = [_WORDS[i] for i in rng.integers(0, len(_WORDS), size=n)]
            out.append(Prompt(" ".join(words), n, None, False))
        elif form == "ids":
            out.append(Prompt(_random_ids(rng, n, tok), n, n, True))
        else:
            out.append(_text_prompt(rng, n, tok))
    return out
