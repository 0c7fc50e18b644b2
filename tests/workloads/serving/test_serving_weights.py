"""serve-sweep says when the engine ran random weights: in each record, config.json, the
run log and the report (their completions are meaningless text)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from charbench.engine.labels import RANDOM_WEIGHTS_WARNING
from charbench.workloads.serving.client import EngineTarget, HttpTarget, weights_fields
from charbench.workloads.serving.figures import weights_section
from .fakes import LoopbackSSE


def test_weights_fields() -> None:
    rand = weights_fields("random", "the engine")
    assert (dict(rand), rand.warnings, rand.reasons) == ({"engine_weights": "random"}, [RANDOM_WEIGHTS_WARNING], {})
    ckpt = weights_fields("checkpoint", "the engine")
    assert (dict(ckpt), ckpt.warnings, ckpt.reasons) == ({"engine_weights": "checkpoint"}, [], {})
    unknown = weights_fields(None, "the server at http://x")
    assert dict(unknown) == {"engine_weights": None} and unknown.warnings == []
    assert unknown.reasons == {"engine_weights": "the server at http://x does not say whether its weights are random ('weights' in /v1/models)"}


def test_targets_say_their_weights() -> None:
    from charbench.engine.api import EngineConfig
    from charbench.engine.server import BackgroundServer, build_app

    target = EngineTarget(EngineConfig(model="tiny", kv_cache_gb=0.01))
    try:
        d = target.describe()
        assert (d["engine_weights"], d.warnings) == ("random", [RANDOM_WEIGHTS_WARNING])
        # the same engine behind `charbench serve`'s app: the URL target learns it from /v1/models
        with BackgroundServer(build_app(target.engine)) as srv:
            http = HttpTarget(srv.url)
            http.probe()
            d = http.describe()
            assert (d["engine_weights"], d.warnings) == ("random", [RANDOM_WEIGHTS_WARNING])
    finally:
        target.shutdown()
    with LoopbackSSE() as other:  # a server that does not say: null with its reason
        http = HttpTarget(other.url)
        http.probe()
        d = http.describe()
        assert d["engine_weights"] is None and d.warnings == []
        assert d.reasons["engine_weights"].startswith(f"the server at {http.base} does not say")


def test_weights_section() -> None:
    assert weights_section([{"engine_weights": "checkpoint"}, {"engine_weights": None}]) is None
    s = weights_section([{"engine_weights": "random", "engine_model": "tiny"}, {"engine_weights": "checkpoint", "engine_model": "/m"}])
    assert s is not None and s.title == "Random weights"
    assert s.html == (
        '<div class="failure"><span class="badge not-measured">random weights</span> 1 of 2 load(s) ran on random '
        f"weights (model tiny): {RANDOM_WEIGHTS_WARNING}. Latency, throughput and energy are those of the model&#39;s shape.</div>"
    )


@pytest.mark.slow
def test_sweep_on_random_weights_is_labelled(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from charbench.cli import main
    from charbench.results import RunStore

    rc = main(["serve-sweep", "--device", "cpu", "--out", str(tmp_path), "--num-requests", "4", "--request-rate", "inf",
               "--max-num-seqs", "4", "--input-len", "8", "--output-len", "4", "--idle-baseline", "0"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert f"warning: {RANDOM_WEIGHTS_WARNING}" in out.err  # the run log
    (run,) = (tmp_path / "serve-sweep").iterdir()
    (rec,) = RunStore.open(run).records()
    assert rec["engine_weights"] == "random" and RANDOM_WEIGHTS_WARNING in rec["warnings"]
    assert json.loads((run / "config.json").read_text())["study_config"]["engine_weights"] == {"tiny": "random"}
    html = (run / "report.html").read_text()
    assert html.index("Random weights") < html.index("Serving summary")
