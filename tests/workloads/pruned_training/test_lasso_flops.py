"""Group lasso (value, gradient, lambda) and the FLOPs counter against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from charbench.workloads.pruned_training.flops import count_cost
from charbench.workloads.pruned_training.lasso import NORM_EPS, group_lasso, group_norms, penalty_coefficient
from charbench.workloads.pruned_training.models import Arch, Net


def tiny_vgg() -> Net:
    """conv 1->4 (8x8), max-pool, conv 4->6 (4x4), FC 6->3."""
    torch.manual_seed(0)
    return Net(Arch("tiny", "vgg", ("c0", "M", "c1"), False, False, {"c0": 4, "c1": 6}, 1, 3))


def test_group_lasso_value_matches_a_loop_over_groups() -> None:
    net = tiny_vgg()
    expected = 0.0
    for i, cb in enumerate(net.convbns()):
        w = cb.conv.weight.detach().numpy().astype(np.float64)
        expected += sum(math.sqrt((w[k] ** 2).sum() + NORM_EPS) for k in range(w.shape[0]))
        if i > 0:  # not the first conv's input channels
            expected += sum(math.sqrt((w[:, c] ** 2).sum() + NORM_EPS) for c in range(w.shape[1]))
    fc = net.fc.weight.detach().numpy().astype(np.float64)
    expected += sum(math.sqrt((fc[:, c] ** 2).sum() + NORM_EPS) for c in range(fc.shape[1]))
    assert group_lasso(net).item() == pytest.approx(expected, rel=1e-6)


def test_group_lasso_gradient_matches_the_analytic_one() -> None:
    net = tiny_vgg()
    group_lasso(net).backward()
    first, second = list(net.convbns())
    w0 = first.conv.weight.detach()
    # first conv: output groups only -> w / ||w[k]||
    n0 = torch.sqrt(w0.pow(2).sum(dim=(1, 2, 3), keepdim=True) + NORM_EPS)
    torch.testing.assert_close(first.conv.weight.grad, w0 / n0)
    w1 = second.conv.weight.detach()
    out_n = torch.sqrt(w1.pow(2).sum(dim=(1, 2, 3), keepdim=True) + NORM_EPS)
    in_n = torch.sqrt(w1.pow(2).sum(dim=(0, 2, 3), keepdim=True) + NORM_EPS)
    torch.testing.assert_close(second.conv.weight.grad, w1 / out_n + w1 / in_n)
    fw = net.fc.weight.detach()
    torch.testing.assert_close(net.fc.weight.grad, fw / torch.sqrt(fw.pow(2).sum(dim=0, keepdim=True) + NORM_EPS))


def test_group_norms_of_a_zero_group_is_sqrt_eps() -> None:
    assert group_norms(torch.zeros(2, 3), 1).tolist() == pytest.approx([1e-4] * 3)


def test_lambda_makes_the_penalty_the_ratio_of_the_total_loss() -> None:
    lam = penalty_coefficient(2.0, 50.0, 0.2)
    assert lam == pytest.approx(0.2 * 2.0 / (0.8 * 50.0))
    assert lam * 50.0 / (2.0 + lam * 50.0) == pytest.approx(0.2)
    with pytest.raises(ValueError, match=r"^--penalty-ratio must be in \(0, 1\), got 1.0$"):
        penalty_coefficient(2.0, 50.0, 1.0)


def test_flops_counter_matches_hand_computed_values() -> None:
    cost = count_cost(tiny_vgg(), (1, 8, 8))
    # conv0: C=1 K=4 3x3, 8x8 -> 8x8: inference 1*9*4*64 = 2304 MAC; data grad (8+2)^2*4*9*1 = 3600
    # conv1: C=4 K=6 3x3, 4x4 -> 4x4: inference 4*9*6*16 = 3456; data grad (4+2)^2*6*9*4 = 7776; FC 6x3: 18 / 54
    assert [(lc.inference_macs, lc.train_macs) for lc in cost.layers] == [(2304, 2 * 2304 + 3600), (3456, 2 * 3456 + 7776), (18, 54)]
    assert cost.inference_flops == 2 * (2304 + 3456 + 18) == 11556
    assert cost.train_flops_per_sample == 2 * (8208 + 14688 + 54) == 45900
    assert cost.param_count == 4 * 9 + 2 * 4 + 6 * 4 * 9 + 2 * 6 + 6 * 3 + 3
