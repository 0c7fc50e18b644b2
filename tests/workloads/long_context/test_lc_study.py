"""long-context end to end (tiny sizes): records, tables, the report's figure data and table values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from charbench.cli import main
from charbench.results import RunStore

ARGS = ["--context", "128,256", "--parallel", "1x1x1", "--prefill-chunk", "64", "--decode-steps", "3", "--mixed-context", "256",
        "--mixed-decodes", "2", "--mixed-prompt-tokens", "16", "--chunk", "adaptive,fixed:128", "--json"]


def _run(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str]) -> Path:
    rc = main(["long-context", "--out", str(tmp_path), *args])
    out = capsys.readouterr()
    assert rc == 0, out.err
    payload = json.loads(out.out[out.out.index("{"):])
    assert payload["status"] == "completed" and payload["points_failed"] == 0
    return Path(payload["run_dir"])


def test_tiny_run_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _run(tmp_path, capsys, ARGS)
    store = RunStore.open(run)
    recs = store.records()
    assert [(r["workload"], r["context"], r["chunk"]) for r in recs] == [
        ("prefill", 128, "fixed:64"), ("prefill", 256, "fixed:64"), ("mixed", 256, "adaptive"), ("mixed", 256, "fixed:128")]
    for r in recs:
        assert r["parallel"] == "1x1x1" and r["ttft_ms"] > 0 and r["p50_tbt_ms"] > 0 and r["p99_tbt_ms"] >= r["p50_tbt_ms"]
        assert r["prefill_throughput_tok_s"] == pytest.approx(r["context"] / (r["ttft_ms"] / 1e3))
        assert r["max_kv_bytes"] > 0 and r["mean_kvp_comm_bytes"] == 0.0  # one rank: nothing sent
    pre, mixed_fixed = recs[1], recs[3]
    saved = json.loads((run / "predictor.json").read_text())
    assert recs[2]["mean_predictor_error_frac"] == saved["error"]["mean_abs_rel_error"] > 0
    assert "mean_predictor_error_frac" not in mixed_fixed or mixed_fixed["mean_predictor_error_frac"] is None
    assert pre["chunk_count"] == 4 and mixed_fixed["chunk_count"] == 2 and mixed_fixed["mean_chunk_tokens"] == 128.0
    # KV in use at the end: the prompt plus the decode steps but the last sampled one (2 layers x K,V x 1 head x 32 x fp32)
    assert pre["max_kv_bytes"] == (256 + 3 - 1) * 2 * 2 * 32 * 4
    assert set(store.tables()) >= {"chunks", "memory", "comm", "tbt_timeline", "predictor_samples", "calibration", "projection",
                                   "paper_comparison"}
    chunks = store.read_table("chunks")
    fixed = chunks[(chunks["workload"] == "mixed") & (chunks["chunk"] == "fixed:128")]
    assert list(fixed["chunk_tokens"]) == [128, 128] and list(fixed["kv_context_tokens"]) == [0, 128]
    adaptive = chunks[(chunks["workload"] == "mixed") & (chunks["chunk"] == "adaptive")]
    assert adaptive["chunk_tokens"].sum() == 256 and adaptive["predicted_ms"].notna().all()
    assert (run / "predictor.json").is_file() and (run / "report.html").is_file()

    from report_content import close, report_content, trace_xy

    content = report_content(run)
    x, y = trace_xy(content.figure_with_trace("1x1x1"), "1x1x1", axis="y")
    assert x == [128, 256] and close(y, [recs[0]["ttft_ms"] / 1e3, recs[1]["ttft_ms"] / 1e3])
    x, y = trace_xy(content.figure_with_trace("1x1x1"), "1x1x1", axis="y2")
    assert close(y, [recs[0]["p50_tbt_ms"], recs[1]["p50_tbt_ms"]])
    x, y = trace_xy(content.figure_with_trace("fixed:128 (1x1x1)"), "fixed:128 (1x1x1)")
    assert x == [0, 128] and y == [128, 128]  # chunk size vs KV length
    tl = store.read_table("tbt_timeline")
    first = tl[(tl["request"] == 0) & (tl["chunk"] == "adaptive")]
    timeline = next(f for f in content.figures if f.layout.xaxis.title.text == "token of short request 0")
    x, y = trace_xy(timeline, "adaptive (1x1x1)")
    assert close(y, list(first["tbt_ms"]))
    mixed_table = content.table_with_column("tbt_slo_attainment_frac")
    assert list(mixed_table["chunk"]) == ["adaptive", "fixed:128"]
    assert close(list(mixed_table["p99_tbt_ms"]), [recs[2]["p99_tbt_ms"], recs[3]["p99_tbt_ms"]])
    proj = content.table_with_column("projected_ttft_s")
    assert close(list(proj["projected_ttft_s"]), list(store.read_table("projection")["projected_ttft_s"]))
    assert set(proj["kind"]) == {"projected"}
    paper = content.table_with_column("paper_value")
    assert list(paper["paper_value"])[:3] == [1000 / 30, 40.0, 250.0]


@pytest.mark.slow
def test_kvp_and_spp_ranks_are_started_once_per_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _run(tmp_path, capsys, ["--context", "128,256", "--parallel", "kvp=2,spp=2", "--prefill-chunk", "64", "--decode-steps", "3",
                                  "--mixed-context", "0", "--json"])
    recs = RunStore.open(run).records()
    assert [(r["parallel"], r["context"]) for r in recs] == [("1x1x2", 128), ("1x1x2", 256), ("1x2x1", 128), ("1x2x1", 256)]
    kvp = recs[1]
    assert kvp["mean_kvp_comm_bytes"] > 0 and kvp["mean_spp_comm_bytes"] == 0.0
    spp = recs[3]
    assert spp["mean_prefill_spp_comm_bytes"] == 64 * 64 * 4  # one [chunk, hidden] fp32 activation per chunk
    mem = RunStore.open(run).read_table("memory")
    both = mem[(mem["parallel"] == "1x1x2") & (mem["context"] == 256)]
    # contiguous shards of ceil((256 + 3) / 2) = 130 tokens: rank 1 holds the newest ones (256 + 3 - 1 in use at the end)
    assert list(both["kv_tokens"]) == [130, 256 + 3 - 1 - 130]


def test_hf_checkpoint_with_llama3_rope_scaling(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A local Hugging Face folder runs too (the shipped cache-reuse base, given Llama-3.1's rope scaling)."""
    from charbench.engine.runner import resolve_model_config
    from charbench.workloads.cache_reuse.run import materialize_shipped

    materialize_shipped(tmp_path / "ckpt")
    folder = tmp_path / "ckpt" / "base"
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(max_position_embeddings=131072, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                             "high_freq_factor": 4.0, "original_max_position_embeddings": 256})
    (folder / "config.json").write_text(json.dumps(cfg))
    assert resolve_model_config(str(folder)).rope_scaling["rope_type"] == "llama3"
    run = _run(tmp_path, capsys, ["--model", str(folder), "--context", "300", "--parallel", "1x1x1", "--prefill-chunk", "100",
                                  "--decode-steps", "3", "--mixed-context", "0", "--json"])
    (rec,) = RunStore.open(run).records()
    assert rec["model"] == str(folder) and rec["chunk_count"] == 3 and rec["ttft_ms"] > 0
    # 6 layers x K,V x 2 KV heads x 16 x fp32 per token, prompt + decodes but the last one
    assert rec["max_kv_bytes"] == (300 + 3 - 1) * 6 * 2 * 2 * 16 * 4
