"""charbench cache-reuse end to end on tiny random checkpoints, option errors, export and training."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from charbench.cli import main
from charbench.engine.model import LlamaModel
from charbench.engine.weights import RandomSource, load_weights
from charbench.workloads.cache_reuse.pair import Mode, PairRuntime, make_items
from charbench.workloads.cache_reuse.tasks import examples
from charbench.workloads.cache_reuse.train import TrainSpec, _reload, build_pairs, export_checkpoint

SPEC = TrainSpec(num_layers=3, hidden_size=32, num_heads=2, num_kv_heads=1, intermediate_size=64)
FAST = ["--profile-count", "4", "--heldout-count", "4", "--timing-count", "1", "--timing-repeats", "1",
        "--max-new-tokens", "2", "--device", "cpu", "--prompt", "{input} ?", "--metric", "rouge_l", "--timing-tokens", "40"]


def _random_checkpoint(folder: Path, seed: int) -> Path:
    model = LlamaModel(SPEC.model_config(), torch.float32, "cpu")
    load_weights(model, RandomSource(seed, "cpu"))
    export_checkpoint(model, folder)
    return folder


@pytest.fixture(scope="module")
def pair_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two random siblings and a JSONL whose answers are the receiver's own greedy output."""
    root = tmp_path_factory.mktemp("pair")
    a, b = _random_checkpoint(root / "a", 1), _random_checkpoint(root / "b", 2)
    records = [e.to_record("hotpotqa") for e in examples("get", 8, 6, 0)]
    rt = PairRuntime("t", str(a), str(b), "cpu", "fp32", 2)
    try:
        items = make_items(records, rt.tokenizer, 8192, "f1", "{input} ?")
        for i, (rec, item) in enumerate(zip(records, items)):
            rec["answers"] = [rt.generate(Mode("full_recompute"), ("x", i), item)]
    finally:
        rt.close()
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    return {"a": a, "b": b, "data": data}


def _results(out: Path) -> pd.DataFrame:
    from charbench.results import RunStore

    run = next((out / "cache-reuse").iterdir())
    return RunStore.open(run).results_frame().sort_values("point_index").reset_index(drop=True)


def _check_report(out: Path, df: pd.DataFrame) -> None:
    """The pair section's figures and tables hold the run's points (content, not titles)."""
    from report_content import close, report_content, trace_xy

    from charbench.workloads.cache_reuse.analysis import PAPER

    run = next((out / "cache-reuse").iterdir())
    assert (run / "report.html").is_file()
    content = report_content(run)
    frontier = content.figure_with_trace("DroidSpeak group [a,b]")
    ds = df[df["mode"] == "droidspeak"]
    assert trace_xy(frontier, "DroidSpeak group [a,b]") == (list(ds["recomputed_layer_count"]), list(ds["quality_pct"]))
    cb = df[df["mode"] == "cacheblend"]
    assert trace_xy(frontier, "CacheBlend (same budget)") == (list(cb["recomputed_layer_count"]), list(cb["quality_pct"]))
    base = df[df["mode"] == "full_recompute"].iloc[0]
    assert trace_xy(frontier, "receiver (full recompute)") == ([base["recomputed_layer_count"]], [base["quality_pct"]])
    modes = content.table_with_column("cost_model_speedup")
    assert list(modes["mode"]) == list(df["mode"]) and close(list(modes["quality_pct"]), list(df["quality_pct"]))
    assert close(list(modes["speedup"]), list(base["median_prefill_ms"] / df["median_prefill_ms"]))
    assert close(list(modes["cost_model_speedup"]), [3 / m if m else None for m in df["recomputed_layer_count"]])
    targets = content.table_with_column("met")
    assert len(targets) > 0 and set(targets["met"]) <= {True, False, None}
    paper = content.table_with_column("paper")
    assert list(paper["figure"]) == list(PAPER) and list(paper["paper"]) == list(PAPER.values())


def test_real_pair_runs_every_mode_and_reports(pair_dirs: dict[str, Path], charbench_home: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from report_content import use_meter

    use_meter(monkeypatch, "not-measured", tmp_path)
    out = tmp_path / "runs"
    args = ["cache-reuse", "--sender", str(pair_dirs["a"]), "--receiver", str(pair_dirs["b"]), "--data", str(pair_dirs["data"]),
            *FAST, "--out", str(out)]
    assert main(args) == 0
    df = _results(out)
    assert list(df["mode"].value_counts().sort_index().items()) == [
        ("cacheblend", 2), ("droidspeak", 6), ("full_recompute", 1), ("full_reuse", 1), ("reuse_only", 3)]
    base = df[df["mode"] == "full_recompute"].iloc[0]
    assert base["quality_pct"] == 100.0  # the answers are the receiver's own output
    assert base["moved_bytes"] == 0.0 and base["recomputed_layer_count"] == 3.0
    reuse = df[df["mode"] == "full_reuse"].iloc[0]
    tokens = base["mean_context_tokens"]
    assert reuse["reused_kv_bytes"] == pytest.approx(3 * 2 * 1 * 16 * 4 * tokens)  # 3 layers, K+V, 1 kv head x 16, fp32
    g = df[(df["mode"] == "droidspeak") & (df["setting"] == "1-1")].iloc[0]
    assert g["e_cache_bytes"] == pytest.approx(32 * 4 * tokens) and g["reused_kv_bytes"] == pytest.approx(2 * 2 * 16 * 4 * tokens)
    assert df["recomputed_token_count"].notna().tolist() == (df["mode"] == "cacheblend").tolist()
    assert df["energy_j"].isna().all()
    _check_report(out, df)


def test_identical_sender_and_receiver_every_mode_scores_the_same(pair_dirs: dict[str, Path], charbench_home: Path,
                                                                  tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from report_content import use_meter

    use_meter(monkeypatch, "measured", tmp_path)  # the other pair runs unmeasured: both report branches
    out = tmp_path / "same"
    assert main(["cache-reuse", "--sender", str(pair_dirs["b"]), "--receiver", str(pair_dirs["b"]), "--data",
                 str(pair_dirs["data"]), *FAST, "--out", str(out)]) == 0
    df = _results(out)
    assert df["quality_pct"].tolist() == [100.0] * len(df)
    assert df["heldout_quality_pct"].tolist() == [100.0] * len(df)
    assert df["energy_j"].notna().all()
    _check_report(out, df)


@pytest.mark.parametrize(("args", "message"), [
    (["--sender", "x"], "Error: --sender, --receiver and --data go together"),
    (["--sender", "nowhere", "--receiver", "nowhere", "--data", "d.jsonl"],
     "Error: --sender nowhere: not a checkpoint folder (no config.json); give a local Hugging Face checkpoint folder"),
    (["--pairs", "all_blocks,fancy"], "Error: --pairs"),
    (["--tolerance", "1.5"], "Error: --tolerance must be a finite number >= 0 and < 1 (got 1.5)"),
    (["--prompt", "Q:"], "Error: --prompt 'Q:': must contain {input} (where the question goes)"),
    (["--metric", "bleu"], "Error: --metric: unknown metric 'bleu'; valid: f1, rouge_l, edit_sim"),
    (["--cpu-threads", "0"], "Error: --cpu-threads must be an integer >= 1 and <= 4096 (got 0)"),
])
def test_cli_bad_options(args: list[str], message: str, charbench_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cache-reuse", "--device", "cpu", *args]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bad_jsonl_is_named(pair_dirs: dict[str, Path], charbench_home: Path, tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"context": "k1 v1", "input": "get k1"}\n')
    assert main(["cache-reuse", "--sender", str(pair_dirs["a"]), "--receiver", str(pair_dirs["b"]), "--data", str(bad),
                 *FAST, "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert f"Error: --data {bad}: line 1 needs 'context', 'input' and a list 'answers'" in err


def test_export_round_trips_through_the_engine_loader(tmp_path: Path) -> None:
    model = LlamaModel(SPEC.model_config(), torch.float32, "cpu")
    load_weights(model, RandomSource(5, "cpu"))
    export_checkpoint(model, tmp_path / "m")
    back = _reload(tmp_path / "m")
    for (name, p), (_, q) in zip(model.named_parameters(), back.named_parameters()):
        assert torch.equal(p.half().float(), q), name


def test_training_is_reproducible_from_its_seed(tmp_path: Path) -> None:
    spec = TrainSpec(num_layers=2, hidden_size=16, num_heads=2, num_kv_heads=1, intermediate_size=32, pairs=4,
                     batch_size=4, base_steps=20, finetune_steps=20, eval_count=20, middle_layers=(1,))
    first = build_pairs(tmp_path / "one", spec, log=lambda _m: None)
    second = build_pairs(tmp_path / "two", spec, log=lambda _m: None)
    assert first["accuracy_pct"] == second["accuracy_pct"]
    for role in ("base", "all_blocks", "middle"):
        assert (tmp_path / "one" / role / "model.safetensors").read_bytes() == (tmp_path / "two" / role / "model.safetensors").read_bytes()
    one, base = _reload(tmp_path / "one" / "middle"), _reload(tmp_path / "one" / "base")
    assert torch.equal(one.layers[0].qkv_weight, base.layers[0].qkv_weight)  # frozen outside middle_layers
    assert not torch.equal(one.layers[1].qkv_weight, base.layers[1].qkv_weight)
    assert torch.equal(one.embed, base.embed)


def test_targets_are_not_judged_when_their_premise_fails() -> None:
    from charbench.workloads.cache_reuse.analysis import TARGETS, targets

    weak = {"receiver_quality_pct": 32.0, "full_reuse_drop_pts": 0.5,
            "best_single_layer": {"gap_recovered_frac": 3.0, "speedup": 6.0}, "chosen": {"quality_delta_pts": 0.0, "speedup": 5.1}}
    assert targets("all_blocks", weak)[TARGETS[2]] is None  # a 0.5-point gap "recovered" 300% says nothing
    assert targets("middle", weak)[TARGETS[3]] is None
    strong = dict(weak, receiver_quality_pct=92.0, full_reuse_drop_pts=20.0, best_single_layer={"gap_recovered_frac": 0.7, "speedup": 6.0})
    assert targets("all_blocks", strong)[TARGETS[2]] is True
    assert targets("middle", strong)[TARGETS[3]] is True


def test_training_rows_carry_several_queries_each_followed_by_its_answer() -> None:
    import random

    from charbench.workloads.cache_reuse.tasks import vocabulary
    from charbench.workloads.cache_reuse.train import training_batch

    vocab = vocabulary()
    word_id = {w: i for i, w in enumerate(vocab)}
    spec = TrainSpec(pairs=3, queries=2, batch_size=2)
    ids, where, ans = training_batch("get", spec, random.Random(0), word_id)
    assert ids.shape == (2, 1 + 3 + 2 * 3 - 1) and where.tolist() == [[5, 8], [5, 8]]
    for row, pos, a in zip(ids.tolist(), where.tolist(), ans.tolist()):
        words = [vocab[i] for i in row]
        assert words[0] == "<s>" and words[4] == "get" == words[7] and words[6] == vocab[a[0]]
        facts = dict(w.split(":") for w in words[1:4])
        assert [facts[words[p]] for p in pos] == [vocab[x] for x in a]  # each answer is the asked key's value


def test_fact_tokens_start_as_the_sum_of_their_key_and_value() -> None:
    from charbench.workloads.cache_reuse.tasks import vocabulary
    from charbench.workloads.cache_reuse.train import _fresh

    word_id = {w: i for i, w in enumerate(vocabulary())}
    e = _fresh(SPEC).embed
    assert len(vocabulary()) == 6 + 16 + 16 + 16 * 16
    assert torch.equal(e[word_id["k3:v9"]], e[word_id["k3"]] + e[word_id["v9"]])


def test_each_task_answers_from_the_facts_as_documented() -> None:
    import random

    from charbench.workloads.cache_reuse.tasks import draw_query

    keys, values = [7, 3, 5], [15, 2, 2]
    rng = random.Random(0)
    drawn = {draw_query(task, keys, values, rng) for task in ("get", "next", "key") for _ in range(60)}
    assert drawn == {("get k7", "v15"), ("get k3", "v2"), ("get k5", "v2"),
                     ("next k7", "v0"), ("next k3", "v3"), ("next k5", "v3"),  # value + 1, v15 wraps to v0
                     ("key v15", "k7"), ("key v2", "k3")}  # the first fact holding the value


def test_quick_preset_times_with_one_cpu_thread() -> None:
    from charbench.workloads.cache_reuse.config import PRESETS

    assert (PRESETS["quick"].cpu_threads, PRESETS["paper"].cpu_threads) == (1, None)
