"""Prompts of exact token counts with the target's tokenizer."""

from __future__ import annotations

import pytest

from charbench.errors import ConfigError
from charbench.workloads.serving.prompts import as_tokenizer, build_prompts, load_tokenizer_file

from .fakes import fake_tokenizer


def test_ids_are_exact_and_avoid_special_tokens() -> None:
    tok = fake_tokenizer(50)
    ps = build_prompts(tok, [1, 7, 300], form="ids", seed=0)
    assert [len(p.prompt) for p in ps] == [1, 7, 300]
    assert all(p.exact and p.prompt_tokens == p.target_tokens for p in ps)
    assert not ({0, 1} & {i for p in ps for i in p.prompt})  # type: ignore[union-attr]
    assert ps[1].prompt != build_prompts(tok, [7], form="ids", seed=1)[0].prompt


def test_text_prompts_are_exact_with_the_tokenizer() -> None:
    tok = fake_tokenizer()
    ps = build_prompts(tok, [5, 64], form="text", seed=2)
    for p in ps:
        assert isinstance(p.prompt, str)
        assert len(tok.encode(p.prompt)) == p.target_tokens and p.exact


def test_byte_tokenizer_of_the_engine_counts_bos() -> None:
    from charbench.engine.tokenizer import ByteTokenizer

    tok = as_tokenizer(ByteTokenizer(258))
    assert tok.adds_bos and {256, 257} <= tok.special_ids
    p = build_prompts(tok, [20], form="text", seed=0)[0]
    assert p.exact and len(ByteTokenizer(258).encode(p.prompt, add_bos=True)) == 20
    ids = build_prompts(tok, [20], form="ids", seed=0)[0].prompt
    assert len(ids) == 20 and max(ids) < 256  # type: ignore[arg-type]


def test_without_tokenizer_text_is_approximate_and_ids_refused() -> None:
    p = build_prompts(None, [10], form="text")[0]
    assert len(p.prompt.split()) == 10 and p.prompt_tokens is None and not p.exact  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="--tokenizer"):
        build_prompts(None, [10], form="ids")


def test_hf_tokenizer_file(tmp_path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate("the of and to in is that for it as".split())}}
    hf = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path / "tokenizer.json"
    hf.save(str(path))
    tok = load_tokenizer_file(str(tmp_path))
    assert tok.vocab_size == 11
    p = build_prompts(tok, [12], form="text", seed=0)[0]
    assert p.exact and len(hf.encode(p.prompt).ids) == 12
    with pytest.raises(ConfigError, match="--tokenizer"):
        load_tokenizer_file(str(tmp_path / "missing"))
