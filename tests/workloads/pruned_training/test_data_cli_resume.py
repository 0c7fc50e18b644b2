"""CIFAR pickle loading, missing-data errors, CLI bad options, and resume after a crash mid-training."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from charbench.cli import main
from charbench.errors import ConfigError
from charbench.workloads.pruned_training.data import load_cifar, load_dataset

TINY = ["--device", "cpu", "--model", "resnet20", "--image-size", "8", "--epochs", "3", "--batch-size", "32", "--limit-train", "64",
        "--reconfig-interval", "1", "--threshold", "0.3", "--penalty-ratio", "0.5"]


def _write_cifar10(folder: Path) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(4, 3072), dtype=np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": [0, 1, 2, 3]}, f)


def test_cifar_loader_reads_pickle_batches(tmp_path: Path) -> None:
    _write_cifar10(tmp_path / "cifar-10-batches-py")
    ds = load_cifar("cifar10", tmp_path)
    assert (len(ds.train), len(ds.test), ds.num_classes, ds.train.image_shape) == (20, 4, 10, (3, 32, 32))
    assert ds.train.y[:4].tolist() == [0, 1, 2, 3]
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "rb") as f:
        raw = pickle.load(f, encoding="bytes")[b"data"]
    x, _ = ds.test.get(np.arange(1))
    assert float(x[0, 0, 0, 0]) == pytest.approx((raw[0, 0] / 255.0 - 0.4914) / 0.2470, rel=1e-5)


def test_missing_cifar_says_where_to_put_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^--data-dir: no CIFAR-10 python batches in .* extract the 'python version' from https://www.cs.toronto.edu/~kriz/cifar.html into .* \(charbench never downloads\)$"):
        load_cifar("cifar10", tmp_path)
    with pytest.raises(ConfigError, match=r"^--dataset cifar100 needs --data-dir DIR \(a local copy; charbench never downloads\)$"):
        load_dataset("cifar100", None, None, 32, 0.0)


@pytest.mark.parametrize(("args", "message"), [
    (["--model", "resnet21"], "Error: --model: unknown model 'resnet21'; choose one of resnet20, resnet32, resnet56, resnet110, resnet18, resnet50, vgg11, vgg13, vgg16"),
    (["--dataset", "mnist"], "Error: --dataset: unknown dataset 'mnist'; choose one of digits, cifar10, cifar100, imagenet"),
    (["--amp"], "Error: --amp needs a GPU (autocast fp16 on CUDA); use --device cuda or drop --amp"),
    (["--dynamic-batch", "--max-batch-size", "16"], "Error: --max-batch-size 16 is below --batch-size 64; raise it or drop --dynamic-batch"),
    (["--shuffle"], "Error: --shuffle: prune-train runs its points in order (each continues the state of the one before); drop --shuffle"),
])
def test_cli_bad_options(args: list[str], message: str, charbench_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prune-train", "--device", "cpu", *args]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_cli_range_and_missing_data(charbench_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prune-train", "--device", "cpu", "--penalty-ratio", "1.5"]) == 1
    assert "Error: --penalty-ratio must be a finite number > 0 and < 1 (got 1.5)\n" in capsys.readouterr().err
    assert main(["prune-train", "--device", "cpu", "--dataset", "cifar10", "--data-dir", str(tmp_path)]) == 1
    assert f"Error: --data-dir: no CIFAR-10 python batches in {tmp_path}" in capsys.readouterr().err


def _records(run: Path) -> pd.DataFrame:
    from charbench.results import RunStore

    return RunStore.open(run).results_frame().sort_values("point_index").reset_index(drop=True)


def _check_report(run: Path, df: pd.DataFrame) -> None:
    """The report's figures and tables hold the run's epochs (content, not titles)."""
    from report_content import close, report_content, trace_xy

    from charbench.workloads.pruned_training.analysis import summarize

    assert (run / "report.html").is_file()
    content = report_content(run)
    dense, pruned = (df[df["run"] == r].sort_values("epoch") for r in ("dense", "prunetrain"))
    for run_name, sub in (("dense", dense), ("prunetrain", pruned)):
        acc = next(f for f in content.figures if f.layout.yaxis.title.text == "accuracy (%)")
        assert trace_xy(acc, run_name) == (list(sub["epoch"]), list(sub["test_accuracy_pct"]))
        flop = next(f for f in content.figures if f.layout.yaxis.title.text == "FLOP")
        assert trace_xy(flop, run_name) == (list(sub["epoch"]), list(sub["train_flop"]))
    saved = content.figure_with_trace("training FLOPs saved (%)")
    x, y = trace_xy(saved, "training FLOPs saved (%)")
    assert close(y, list(100 * (1 - pruned["train_flop"].cumsum().to_numpy() / dense["train_flop"].cumsum().to_numpy())))
    s = summarize(df)
    savings = content.table_with_column("train_flop_reduction_pct")
    assert close([savings["train_flop_reduction_pct"].iloc[0], savings["accuracy_delta_pts"].iloc[0]],
                 [s["train_flop_reduction_pct"], s["accuracy_delta_pts"]])
    paper = content.table_with_column("source")
    ours = paper[paper["source"] == "this run"].iloc[0]
    assert ours["dataset"] == "ours: digits" and close([ours["top1_accuracy_pct"]], [s["prunetrain"]["final_test_accuracy_pct"]])
    # channels per space: the heatmap's last column and the final architecture table are the last epoch's network
    arch = content.table_with_column("final_channel_count")
    heat = next(f for f in content.figures if f.data and f.data[0].type == "heatmap")
    assert [row[-1] for row in heat.data[0].z] == list(arch["final_channel_count"])
    assert arch["final_channel_count"].sum() == pruned["channel_count"].iloc[-1]


def test_resume_after_a_crash_continues_with_the_same_result(charbench_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from report_content import use_meter

    use_meter(monkeypatch, "measured", tmp_path)  # the uninterrupted run measures (a fake meter); the resumed one does not
    assert main(["prune-train", *TINY, "--out", str(tmp_path / "a")]) == 0
    first = next((tmp_path / "a" / "prune-train").iterdir())
    whole = _records(first)
    assert whole["energy_j"].notna().all()
    _check_report(first, whole)
    use_meter(monkeypatch, "not-measured", tmp_path)
    from charbench.workloads.pruned_training.train import Trainer

    real = Trainer.train_epoch

    def crash(self, epoch, seed):  # type: ignore[no-untyped-def]
        if self.prune and epoch == 2:
            raise KeyboardInterrupt  # a kill mid-training
        return real(self, epoch, seed)

    monkeypatch.setattr(Trainer, "train_epoch", crash)
    assert main(["prune-train", *TINY, "--out", str(tmp_path / "b")]) == 130  # the CLI turns Ctrl-C into 130
    run = next((tmp_path / "b" / "prune-train").iterdir())
    assert len(_records(run)) == 5
    monkeypatch.setattr(Trainer, "train_epoch", real)
    assert main(["prune-train", "--resume", str(run)]) == 0
    resumed = _records(run)
    cols = ["run", "epoch", "test_accuracy_pct", "mean_train_loss", "train_flop", "total_train_flop", "channel_count", "param_count"]
    pd.testing.assert_frame_equal(resumed[cols], whole[cols])
    assert resumed["channel_count"].iloc[-1] < resumed["channel_count"].iloc[0]  # something was pruned
    assert resumed["energy_j"].isna().all()
    _check_report(run, resumed)


def test_quick_preset_is_the_measured_setting_and_says_how_it_differs() -> None:
    from charbench.workloads.pruned_training.config import PRESETS, QUICK_DIFFERS, lr_at

    q, p = PRESETS["quick"], PRESETS["paper"]
    assert (q.model, q.dataset, q.image_size, q.noise_sigma, q.epochs, q.batch_size) == ("resnet20", "digits", 16, 1.0, 100, 64)
    assert (q.penalty_ratio, q.threshold, q.reconfig_interval) == (0.7, 1e-2, 5)
    assert (p.penalty_ratio, p.threshold, p.reconfig_interval, p.epochs) == (0.2, 1e-4, 10, 182)
    assert (q.cpu_threads, p.cpu_threads) == (1, None)
    assert [lr_at(q, e) for e in (0, 49, 50, 74, 75, 99)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    assert "r=0.7 instead of 0.2, threshold 1e-2 instead of 1e-4" in QUICK_DIFFERS


def test_cpu_threads_out_of_range_names_the_option() -> None:
    from charbench.workloads.pruned_training.config import PRESETS, validate

    with pytest.raises(ConfigError, match=r"--cpu-threads"):
        validate(dataclasses.replace(PRESETS["quick"], cpu_threads=0), "cpu")
