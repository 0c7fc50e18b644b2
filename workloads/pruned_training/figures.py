"""Report sections of ``charbench prune-train``: dense vs PruneTrain.

Accuracy curves; training FLOPs and wall time per epoch; cumulative savings; channels per
space across reconfigurations (heatmap); the final architecture; the paper's table next to ours.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from markupsafe import escape

from charbench.pages import Section, figure_html, table_html
from charbench.report import RunData
from charbench.workloads.pruned_training.analysis import epochs, summarize, wall_s
from charbench.workloads.pruned_training.config import QUICK_DIFFERS

#: PruneTrain's README (Lym et al., SC'19); the column it labels "Top1 error" holds accuracy
PAPER_TABLE = pd.DataFrame([
    ("CIFAR10", "ResNet32", 53, 66, 91.8), ("CIFAR10", "ResNet50", 50, 70, 93.1), ("CIFAR100", "ResNet32", 32, 46, 69.5),
    ("CIFAR100", "ResNet50", 53, 69, 72.4), ("ImageNet", "ResNet50", 37, 53, 74.4), ("ImageNet", "ResNet50", 29, 43, 74.7),
], columns=["dataset", "model", "train_flop_reduction_pct", "inference_flop_reduction_pct", "top1_accuracy_pct"])
COLORS = {"dense": "#1f77b4", "prunetrain": "#d62728"}


def _lines(df: pd.DataFrame, y: Any, title: str, ytitle: str) -> str:
    import plotly.graph_objects as go

    fig = go.Figure()
    for run in ("dense", "prunetrain"):
        sub = epochs(df, run)
        if len(sub):
            fig.add_trace(go.Scatter(x=sub["epoch"], y=y(sub), mode="lines", name=run, line={"color": COLORS[run]}))
    fig.update_layout(title=title, xaxis_title="epoch", yaxis_title=ytitle)
    return figure_html(fig)


def report_sections(data: RunData) -> list[Section]:
    """All prune-train sections for one run folder."""
    df = data.results
    if df is None or len(df) == 0:
        return [Section("PruneTrain", '<p class="muted">No completed epochs; see Failures.</p>')]
    cfg = data.config.get("study_config", {})
    s = summarize(df)
    return [_summary(cfg, s, data), Section("Accuracy", _lines(df, lambda d: d["test_accuracy_pct"], "Test accuracy", "accuracy (%)")),
            Section("Training FLOPs and wall time per epoch",
                    _lines(df, lambda d: d["train_flop"], "Training FLOPs per epoch", "FLOP") + _lines(df, wall_s, "Wall time per epoch", "s")),
            _savings(df), _heatmap(data), _final_arch(df, data), _paper(s, cfg)]


def _summary(cfg: dict[str, Any], s: dict[str, Any], data: RunData) -> Section:
    rows = [{"run": r, **s[r]} for r in ("dense", "prunetrain") if s.get(r)]
    keys = ("train_flop_reduction_pct", "wall_time_reduction_pct", "inference_flop_reduction_pct", "param_reduction_pct", "accuracy_delta_pts")
    savings = pd.DataFrame([{k: s.get(k) for k in keys}])
    ds = {"digits": "scikit-learn's bundled handwritten digits (8x8, 1797 images), upscaled to "
                    f"{cfg.get('image_size')}x{cfg.get('image_size')} with Gaussian noise sigma {cfg.get('noise_sigma')}"}.get(
        str(cfg.get("dataset")), str(cfg.get("dataset")))
    note = f"<p>Dataset: {escape(ds)}. Model {escape(str(cfg.get('model')))}, r={cfg.get('penalty_ratio')}, threshold {cfg.get('threshold')}, " \
           f"reconfiguration every {cfg.get('reconfig_interval')} epochs, {cfg.get('epochs')} epochs, batch {cfg.get('batch_size')}.</p>"
    if cfg.get("preset") == "quick":
        note += f"<p><b>Not the paper's setting:</b> {escape(QUICK_DIFFERS)}.</p>"
    if cfg.get("dynamic_batch"):
        note += "<p>--dynamic-batch: described in the SC19 paper but absent from its released code; our rule (keep per-iteration FLOPs, lr scaled linearly) is unverified.</p>"
    return Section("PruneTrain vs dense: summary", note + table_html(pd.DataFrame(rows)) + table_html(savings), anchor="summary")


def _savings(df: pd.DataFrame) -> Section:
    import plotly.graph_objects as go

    d, p = epochs(df, "dense"), epochs(df, "prunetrain")
    n = min(len(d), len(p))
    if n == 0:
        return Section("Cumulative savings", '<p class="muted">Needs both runs.</p>')
    flop = 100 * (1 - p["train_flop"][:n].cumsum() / d["train_flop"][:n].cumsum())
    wall = 100 * (1 - wall_s(p)[:n].cumsum() / wall_s(d)[:n].cumsum())
    fig = go.Figure([go.Scatter(x=d["epoch"][:n], y=flop, name="training FLOPs saved (%)"), go.Scatter(x=d["epoch"][:n], y=wall, name="wall time saved (%)")])
    fig.update_layout(title="Cumulative savings of PruneTrain over dense", xaxis_title="epoch", yaxis_title="%")
    return Section("Cumulative savings", figure_html(fig))


def _channels(data: RunData) -> pd.DataFrame:
    if "channels" not in data.store.tables():
        return pd.DataFrame()
    ch = data.store.read_table("channels")
    return ch[ch["run"] == "prunetrain"].drop_duplicates(["epoch", "space"], keep="last")


def _heatmap(data: RunData) -> Section:
    import plotly.graph_objects as go

    ch = _channels(data)
    if len(ch) == 0:
        return Section("Channels per layer", '<p class="muted">No PruneTrain channels table in this run.</p>')
    grid = ch.pivot(index="space", columns="epoch", values="channel_count")
    grid = grid.loc[list(dict.fromkeys(ch["space"]))]
    fig = go.Figure(go.Heatmap(z=grid.values, x=list(grid.columns), y=list(grid.index), colorscale="Viridis", colorbar={"title": "channels"}))
    fig.update_layout(title="PruneTrain: channels per space across reconfigurations", xaxis_title="epoch", height=300 + 12 * len(grid))
    return Section("Channels per layer", figure_html(fig))


def _final_arch(df: pd.DataFrame, data: RunData) -> Section:
    ch = _channels(data)
    if len(ch) == 0:
        return Section("Final architecture", '<p class="muted">No PruneTrain epochs.</p>')
    first, last = ch[ch["epoch"] == ch["epoch"].min()], ch[ch["epoch"] == ch["epoch"].max()]
    table = first[["space", "channel_count"]].rename(columns={"channel_count": "dense_channel_count"}).merge(
        last[["space", "channel_count"]].rename(columns={"channel_count": "final_channel_count"}), on="space")
    return Section("Final architecture", table_html(table), note="channels per space in the last epoch's network (after every reconfiguration but the one after that epoch)")


def _paper(s: dict[str, Any], cfg: dict[str, Any]) -> Section:
    ours = pd.DataFrame([{"dataset": f"ours: {cfg.get('dataset')}", "model": cfg.get("model"),
                          "train_flop_reduction_pct": s.get("train_flop_reduction_pct"), "inference_flop_reduction_pct": s.get("inference_flop_reduction_pct"),
                          "top1_accuracy_pct": (s.get("prunetrain") or {}).get("final_test_accuracy_pct")}])
    return Section("The paper's table next to ours", table_html(pd.concat([PAPER_TABLE.assign(source="paper (PruneTrain README)"), ours.assign(source="this run")])),
                   note="Paper rows: PruneTrain's README (its 'Top1 error' column holds accuracy). Ours is a different dataset and scale unless run with --preset paper.")
