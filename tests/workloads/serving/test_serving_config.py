"""Options: parsing, validation messages, restart-knob refusal with a URL, presets."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from charbench.cli import main
from charbench.errors import ConfigError
from charbench.workloads.serving.cli import parse_floats, parse_ints, parse_slo
from charbench.workloads.serving.config import PRESETS, ServeSweepConfig


def test_parsers() -> None:
    assert parse_floats("1, 2.5,inf", "--request-rate") == [1.0, 2.5, math.inf]
    assert parse_ints("4,8", "--max-num-seqs") == [4, 8]
    assert parse_slo("ttft_ms=500,tpot_ms=50") == {"slo_ttft_ms": 500.0, "slo_tpot_ms": 50.0}
    assert parse_slo("ttft:300 e2el:9000") == {"slo_ttft_ms": 300.0, "slo_e2el_ms": 9000.0}
    with pytest.raises(ConfigError, match="--request-rate: 'fast' is not a number"):
        parse_floats("1,fast", "--request-rate")
    with pytest.raises(ConfigError, match="--tp: '2.5' is not an integer"):
        parse_ints("2.5", "--tp")
    with pytest.raises(ConfigError, match="METRIC=MS"):
        parse_slo("latency=5")
    with pytest.raises(ConfigError, match="not a number of milliseconds"):
        parse_slo("ttft_ms=soon")


def test_presets_validate() -> None:
    for p in PRESETS.values():
        ServeSweepConfig(**vars(p)).validate()
    assert PRESETS["greener-llms"].tp == [2, 4, 8] and PRESETS["greener-llms"].model == ["llama-2-70b"]


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"target": "http://127.0.0.1:8000", "tp": [1, 2]}, "--tp: sweeping tp needs a server restart"),
        ({"target": "http://127.0.0.1:8000", "max_num_seqs": [8, 16]}, "--max-num-seqs: sweeping max_num_seqs"),
        ({"target": "http://127.0.0.1:8000", "dtype": ["fp16", "bf16"]}, "--dtype: sweeping dtype"),
        ({"target": "ftp://x"}, "--target"),
        ({"mode": "fast"}, "--mode: unknown mode 'fast'"),
        ({"arrival": "closed"}, "--arrival closed needs --concurrency"),
        ({"concurrency": [4]}, "add --arrival closed"),
        ({"arrival": "trace"}, "--arrival trace needs --trace"),
        ({"mode": "slo-search"}, "needs --slo"),
        ({"mode": "sweep", "request_rate_rps": [4.0]}, "chooses the rates itself"),
        ({"request_rate_rps": [0.0]}, "--request-rate"),
        ({"dtype": ["fp64"]}, "--dtype: unknown dtype"),
        ({"api": "chat", "prompt_format": "ids"}, "chat messages are text"),
        ({"slo_attainment": 1.5}, "--slo-attainment"),
        ({"sm_freq_mhz": [0]}, "--sm-freq"),
        ({"length_dist": "weird"}, "--length-dist"),
        # engine settings fail before the run, not at its first point
        ({"kv_cache_gb": -1.0}, r"^--kv-cache-gb must be a finite number > 0 \(got -1.0\)$"),
        ({"max_model_len": 1}, r"^--max-model-len must be an integer >= 2 \(got 1\)$"),
        ({"max_num_batched_tokens": 0}, r"^--max-num-batched-tokens must be an integer >= 1 \(got 0\)$"),
        ({"max_num_seqs": [4, 64], "max_num_batched_tokens": 32}, "must be >= every --max-num-seqs value \\(largest 64\\)"),
        ({"trace_duration_s": 0.0}, r"^--trace-duration must be a finite number > 0 \(got 0.0\)$"),
        ({"export_profile": f"{__file__}/x/profile.json"}, "--export-profile .*/x/profile.json: cannot write there .* is not a writable folder"),
        ({"export_profile": "/"}, "--export-profile /: is a folder"),
        ({"num_requests": 10**9}, "--num-requests: 1000000000 is more than 1000000 per load"),
    ],
)
def test_bad_configs_name_the_option(changes: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ServeSweepConfig(**changes).validate()


def test_url_may_leave_engine_knobs_unknown() -> None:
    ServeSweepConfig(target="http://127.0.0.1:1", model=[], tp=[], dtype=[], max_num_seqs=[]).validate()


def test_cli_bad_input_messages(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve-sweep", "--target", "http://127.0.0.1:9", "--max-num-seqs", "4,8"]) == 1
    err = capsys.readouterr().err
    assert "Error: --max-num-seqs: sweeping max_num_seqs needs a server restart" in err
    assert main(["serve-sweep", "--slo", "fast"]) == 1
    assert "--slo" in capsys.readouterr().err
    assert main(["serve-sweep", "--preset", "huge"]) == 1
    assert "--preset: unknown preset 'huge'; valid: quick, greener-llms" in capsys.readouterr().err
    assert main(["serve-sweep", "--sm-freq", "1200", "--device", "cpu", "--num-requests", "1"]) == 1
    assert "--sm-freq/--power-limit need a GPU" in capsys.readouterr().err


def _saved_run(tmp_path, **cfg_kw):  # type: ignore[no-untyped-def]
    """A serve-sweep run folder whose config.json holds the quick preset with ``cfg_kw``."""
    import dataclasses

    from charbench.results import RunStore
    from charbench.workloads.serving.run import ServeSweepStudy

    cfg = dataclasses.replace(PRESETS["quick"], **cfg_kw)
    saved = ServeSweepStudy(cfg, target_factory=lambda knobs, device: None).config_dict()
    return RunStore.create(tmp_path, "serve-sweep", config={"study_config": saved, "common": {"seed": 0, "device": "cpu"}}, env={})


def test_resume_refuses_options_that_differ_and_names_them(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    store = _saved_run(tmp_path, num_requests=8)
    assert main(["serve-sweep", "--resume", str(store.path), "--request-rate", "3", "--num-requests", "8", "--max-num-seqs", "2"]) == 1
    assert capsys.readouterr().err == (
        f"Error: --resume {store.path}: the options given differ from the run's (in: max_num_seqs, request_rate_rps); "
        f"drop them to continue with the saved ones (see {store.path / 'config.json'}), or start a new run without --resume\n"
    )
    assert main(["serve-sweep", "--resume", str(store.path), "--preset", "greener-llms"]) == 1
    assert "the options given differ from the run's (in: " in capsys.readouterr().err
    assert main(["serve-sweep", "--resume", str(store.path), "--seed", "3"]) == 1
    assert "differ from the run's (in: seed)" in capsys.readouterr().err


def test_resume_refuses_a_folder_without_config_json(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    store = _saved_run(tmp_path)
    (store.path / "config.json").unlink()
    # before: serve-sweep fell back to the quick preset and merged its points into this run
    assert main(["serve-sweep", "--resume", str(store.path)]) == 1
    assert capsys.readouterr().err == (
        f"Error: --resume {store.path}: config.json is missing; this is not a resumable run folder (start a new run without --resume)\n"
    )
    (store.path / "config.json").write_text('{"study": "serve-sweep"}')
    assert main(["serve-sweep", "--resume", str(store.path)]) == 1
    assert capsys.readouterr().err == (
        f"Error: --resume {store.path}: config.json has no study_config; this is not a resumable run folder (start a new run without --resume)\n"
    )
    (store.path / "config.json").write_text('{"study_config": ')
    assert main(["serve-sweep", "--resume", str(store.path)]) == 1
    assert capsys.readouterr().err == (
        f"Error: {store.path / 'config.json'}: unreadable (JSONDecodeError: Expecting value: line 1 column 18 (char 17)); the run folder is damaged\n"
    )


def test_from_dict_restores_inf_rates() -> None:
    cfg = ServeSweepConfig.from_dict({"request_rate_rps": [None, 2.0]})
    assert cfg.request_rate_rps == [math.inf, 2.0]
    with pytest.raises(ConfigError, match="unknown keys"):
        ServeSweepConfig.from_dict({"bogus": 1})


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["--model", "nonexist"], "Error: --model: unknown preset 'nonexist'"),
        (["--tp", "3"], "Error: --tp 3: model 'tiny' has num_heads=8, not divisible by 3"),
        (["--trace", "/nonexistent/trace.csv"], "Error: --trace: file not found: /nonexistent/trace.csv"),
        (["--kv-cache-gb", "-1"], "Error: --kv-cache-gb must be a finite number > 0 (got -1.0)"),
    ],
)
def test_bad_engine_options_fail_before_the_run(args: list[str], expect: str, charbench_home, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    assert main(["serve-sweep", "--device", "cpu", *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith(expect), err
    assert "completed points are kept" not in err and "--continue-on-error" not in err
    assert not (charbench_home / "serve-sweep").exists()  # no run folder, no idle baseline


def test_dead_url_target_fails_once_with_the_probe_message(charbench_home, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    import socket

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    assert main(["serve-sweep", "--device", "cpu", "--target", url, "--request-rate", "1,2", "--num-requests", "2",
                 "--idle-baseline", "0", "--continue-on-error"]) == 1
    err = capsys.readouterr().err
    assert f"Error: --target {url}: no answer from /v1/models" in err and "is the server running?" in err
    assert "point " not in err  # the run stopped at setup: no point was attempted
    from charbench.results import RunStore

    run = next((charbench_home / "serve-sweep").iterdir())
    store = RunStore.open(run)
    assert store.meta["status"] == "failed" and store.failures() == [] and store.records() == []


def test_checkpoint_without_tokenizer_fails_before_the_run(tmp_path, charbench_home, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    import json

    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 1,
                                                "intermediate_size": 128, "vocab_size": 100}))
    assert main(["serve-sweep", "--device", "cpu", "--model", str(ck)]) == 1
    assert capsys.readouterr().err.startswith(f"Error: --model {ck}: no tokenizer.json")
    assert not (charbench_home / "serve-sweep").exists()


def test_max_throughput_has_one_spelling_from_cli_to_config_json() -> None:
    """``inf`` on the CLI, float inf in the config and knob, ``"inf"`` in config.json (not null), and back."""
    from charbench.workloads.serving.run import ServeSweepStudy

    assert parse_floats("4, inf", "--request-rate") == [4.0, math.inf]
    with pytest.raises(ConfigError, match=r"^--request-rate: 'max' is not a number; e.g. --request-rate 1,4,inf$"):
        parse_floats("max", "--request-rate")
    cfg = ServeSweepConfig(request_rate_rps=[4.0, math.inf])
    saved = json.loads(json.dumps(ServeSweepStudy(cfg).config_dict(), allow_nan=False))  # strict JSON, as config.json
    assert saved["request_rate_rps"] == [4.0, "inf"]
    back = ServeSweepConfig.from_dict({k: v for k, v in saved.items() if k in {f.name for f in dataclasses.fields(ServeSweepConfig)}})
    assert back.request_rate_rps == [4.0, math.inf]
    # a config.json from before the naming rule: request_rate, with inf saved as null
    old = ServeSweepConfig.from_dict({"request_rate": [None, 2.0]})
    assert old.request_rate_rps == [math.inf, 2.0]
