"""PruneTrain (Lym et al., SC'19): structured channel pruning during training from scratch, against dense training.

A group-lasso penalty drives whole channels to zero while the network trains; every few
epochs the network is rebuilt smaller (conv, BN, FC and SGD momentum sliced; the same
optimizer goes on), cutting training FLOPs and time. Both trainings start from the same
seeded weights and see the same mini-batches; each epoch is a point, so ``--resume``
continues a killed run from its last completed epoch::

    charbench prune-train                                  # quick preset: digits, ResNet-20, CPU (<= 10 min)
    charbench prune-train --model vgg11 --image-size 32 --penalty-ratio 0.5 --reconfig-interval 2
    charbench prune-train --preset paper --model resnet32 --dataset cifar10 --data-dir ~/data/cifar --device cuda
"""

from charbench.studies import StudySpec

STUDY = StudySpec(
    command="prune-train",
    help="PruneTrain: channel pruning during training from scratch vs dense training (FLOPs, time, energy, accuracy).",
    cli_module="charbench.workloads.pruned_training.cli",
    gates=("time_s", "energy_j"),
    report_hook="charbench.workloads.pruned_training.figures:report_sections",
    # loss, lr, batch size and the penalty coefficient are recorded as descriptors (no unit)
    metrics=(
        "test_accuracy_pct", "step_count", "sample_count", "train_flop", "total_train_flop", "per_sample_train_flop",
        "inference_flop", "param_count", "channel_count", "removed_channel_count", "reconfig_time_s", "eval_time_s",
        "max_memory_bytes", "max_rss_bytes",
    ),
    # an epoch lasts seconds to minutes: a sample every 0.5 s is enough for its power timeline
    settings={"*": {"sample_interval_s": 0.5}},
)
