"""long-context option validation: exact messages, from the config and through the CLI (exit 1, no traceback)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from charbench.cli import main
from charbench.errors import ConfigError
from charbench.workloads.long_context.config import PRESETS, LongContextConfig, parse_token_list, parse_tokens, validate


def _cfg(**kw: object) -> LongContextConfig:
    return dataclasses.replace(PRESETS["quick"], **kw)


def test_token_counts() -> None:
    assert parse_tokens("4k", "--context") == 4096
    assert parse_tokens(" 32K ", "--context") == 32768
    assert parse_tokens("10m", "--context") == 10 * 2**20
    assert parse_tokens("0.5k", "--context") == 512
    assert parse_token_list("4k,16k,32k", "--context") == [4096, 16384, 32768]
    with pytest.raises(ConfigError) as e:
        parse_tokens("lots", "--context")
    assert str(e.value) == "--context: 'lots' is not a token count; e.g. --context 4k,16k,32k or 4096"
    with pytest.raises(ConfigError) as e:
        parse_tokens("1.3", "--mixed-context")
    assert str(e.value) == "--mixed-context: '1.3' is not a whole number of tokens; e.g. --mixed-context 4k,16k,32k"
    with pytest.raises(ConfigError) as e:
        parse_tokens("nan", "--context")
    assert str(e.value) == "--context: 'nan' is not a whole number of tokens; e.g. --context 4k,16k,32k"
    with pytest.raises(ConfigError) as e:
        parse_token_list(" , ", "--context")
    assert str(e.value) == "--context: empty list; e.g. --context 4k,16k,32k"


@pytest.mark.parametrize("changes, message", [
    ({"parallel": ["1x1"]}, "--parallel '1x1': a numeric layout has 3 degrees; use TPxSPPxKVP (e.g. 1x1x2) or key=n parts joined by 'x' (e.g. tp=2xkvp=2)"),
    ({"parallel": ["kvp=2", "1x1x2"]}, "--parallel: kvp=2,1x1x2 names a layout twice"),
    ({"parallel": ["spp=3"]}, "--parallel spp=3: spp=3 stages but nano-long has 2 layers"),
    ({"parallel": ["tp=2"]}, "--parallel tp=2: tp=2 must divide nano-long's 2 heads and 1 KV heads"),
    ({"parallel": []}, "--parallel: empty list; e.g. --parallel 1x1x1,kvp=2,spp=2"),
    ({"chunk": ["sarathi"]}, "--chunk 'sarathi': unknown chunk policy; valid: fixed:N, adaptive, static-decreasing[:MAX:MIN:STAGES:SPAN]"),
    ({"chunk": ["fixed"]}, "--chunk 'fixed': unknown chunk policy; valid: fixed:N, adaptive, static-decreasing[:MAX:MIN:STAGES:SPAN]"),
    ({"chunk": ["fixed:0"]}, "--chunk 'fixed:0': fixed chunk size must be >= 1, got 0; use e.g. 'fixed:256'"),
    ({"chunk": ["adaptive:x.json@50"]}, "--chunk 'adaptive:x.json@50': adaptive takes no argument (its budget is --tbt-slo-ms)"),
    ({"chunk": ["adaptive", "adaptive"]}, "--chunk: adaptive,adaptive names a policy twice"),
    ({"chunk": ["static-decreasing:1:2"]}, "--chunk 'static-decreasing:1:2': expected 4 integers MAX:MIN:STAGES:SPAN"),
    ({"chunk": []}, "--chunk: empty list; e.g. --chunk adaptive,fixed:2048"),
    ({"contexts": []}, "--context: empty list; e.g. --context 4k,16k,32k"),
    ({"contexts": [8]}, "--context: every value must be an integer >= 16 and <= 10485760 (got 8)"),
    ({"tbt_slo_ms": float("nan")}, "--tbt-slo-ms must be a finite number > 0 and <= 600000 (got nan)"),
    ({"tbt_slo_ms": 0.0}, "--tbt-slo-ms must be a finite number > 0 and <= 600000 (got 0.0)"),
    ({"model": "tiny", "contexts": [8192]}, "--context: 8208 tokens exceed tiny's 4096 positions; use a long-context model (--model nano-long, tiny-long or small-long)"),
    ({"model": "huge"}, None),
    ({"max_tokens_per_rank": 1000}, "--max-tokens-per-rank 1000: a sequence of 32784 tokens does not fit 1x1x1 (kvp=1); raise --max-tokens-per-rank or kvp"),
    ({"projection_gpus": ["v100"]}, "--projection-gpus: expected a comma-separated subset of a100, h100, h200 without repeats, got 'v100'"),
    ({"projection_models": []}, "--projection-models: expected a comma-separated subset of llama-3-8b, llama-3-70b without repeats, got ''"),
])
def test_validation_messages(changes: dict[str, object], message: str | None) -> None:
    with pytest.raises(ConfigError) as e:
        validate(_cfg(**changes))
    if message is None:  # the engine's own message for an unknown preset
        assert str(e.value).startswith("--model: unknown preset 'huge'; valid: tiny, small")
    else:
        assert str(e.value) == message


def test_presets_validate_and_quick_is_the_cpu_sweep() -> None:
    for cfg in PRESETS.values():
        validate(dataclasses.replace(cfg))
    q = PRESETS["quick"]
    assert (q.model, q.contexts, q.parallel, q.chunk, q.tbt_slo_ms) == ("nano-long", [2048, 8192, 32768], ["1x1x1", "kvp=2", "spp=2"],
                                                                        ["adaptive", "fixed:2048"], 50.0)
    # runner settings belong to the spine, not to this config
    names = {f.name for f in dataclasses.fields(LongContextConfig)}
    assert not names & {"idle_baseline_s", "cooldown_s", "sample_interval_s", "shuffle"}


def test_long_context_presets_reach_10m_positions() -> None:
    from charbench.engine.model import RotaryEmbedding, get_preset

    import torch

    for name in ("nano-long", "tiny-long", "small-long"):
        cfg = get_preset(name)
        assert cfg.max_position_embeddings == 10_485_760 and cfg.rope_scaling["rope_type"] == "llama3"
    rope = RotaryEmbedding(get_preset("nano-long"), torch.device("cpu"))
    assert rope.freqs.shape[0] == 65536  # not the 10M-row table
    rope.ensure(65537)
    assert rope.freqs.shape[0] == 131072  # grown 2x


@pytest.mark.parametrize("args, message", [
    (["--context", "4q"], "Error: --context: '4q' is not a token count; e.g. --context 4k,16k,32k or 4096"),
    (["--parallel", "kvp=two"], "Error: --parallel 'kvp=two': cannot read 'kvp=two'; use TPxSPPxKVP (e.g. 1x1x2) or key=n parts joined by 'x' (e.g. tp=2xkvp=2)"),
    (["--chunk", "fixed:abc"], "Error: --chunk 'fixed:abc': 'fixed:abc' needs an integer chunk size, e.g. 'fixed:256'"),
    (["--tbt-slo-ms", "inf"], "Error: --tbt-slo-ms must be a finite number > 0 and <= 600000 (got inf)"),
    (["--mixed-decodes", "0"], "Error: --mixed-decodes must be an integer >= 1 and <= 1024 (got 0)"),
    (["--preset", "huge"], "Error: --preset: unknown preset 'huge'; valid: quick, paper"),
])
def test_cli_errors_exit_1_without_traceback(args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["long-context", "--out", str(tmp_path), *args])
    err = capsys.readouterr().err
    assert rc == 1
    assert message in err.splitlines(), err
    assert "Traceback" not in err
    assert not (tmp_path / "long-context").exists()  # refused before a run folder exists
