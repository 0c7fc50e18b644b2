"""Reconfiguration: |w| detection, the channel union, exact outputs, sliced momentum buffers."""

from __future__ import annotations

import copy

import torch

from charbench.workloads.pruned_training.models import build, make_arch
from charbench.workloads.pruned_training.reconfig import live_channels, reconfigure, sparsify
from charbench.workloads.pruned_training.train import make_sgd
from charbench.workloads.pruned_training.config import PruneTrainConfig


def _kill(net, space: str, channels: list[int], value: float = 1e-5) -> None:
    """Set every group touching ``channels`` of ``space`` to tiny weights (below a 1e-4 threshold)."""
    from charbench.workloads.pruned_training.reconfig import _groups

    with torch.no_grad():
        for w, dim, s in _groups(net):
            if s == space:
                idx = torch.tensor(channels)
                w.index_fill_(dim, idx, value)


def test_zero_channel_detection_uses_the_absolute_value() -> None:
    torch.manual_seed(0)
    net = build(make_arch("vgg11", 1, 10))
    _kill(net, "c1", [0, 1])
    _kill(net, "c1", [1], value=-0.5)  # large negative weights: alive (a signed `< threshold` would drop it)
    alive = live_channels(net, 1e-4)["c1"]
    assert alive[:3].tolist() == [False, True, True] and int(alive.sum()) == 127


def test_union_keeps_a_channel_that_one_member_still_uses() -> None:
    torch.manual_seed(0)
    net = build(make_arch("resnet20", 1, 10))
    _kill(net, "s2", [3])
    with torch.no_grad():
        net.blocks[4].layers[0].conv.weight[:, 3] = 0.3  # one consumer of the stage-2 stream still reads channel 3
    assert bool(live_channels(net, 1e-4)["s2"][3])


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 1, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g)


def _trained(name: str):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    net = build(make_arch(name, 1, 10))
    opt = make_sgd(net, PruneTrainConfig())
    x, y = _batch()
    for _ in range(2):  # non-zero momentum buffers and running statistics
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net, opt


def test_reconfiguration_preserves_outputs_resnet_and_vgg() -> None:
    for name, kills in (("resnet20", {"s1": [0, 5], "b2.1.a": [2], "s3": [7, 8]}), ("vgg11", {"c0": [3], "c4": [10, 11]})):
        net, opt = _trained(name)
        for space, ch in kills.items():
            _kill(net, space, ch)
        sparsify(net, 1e-4)
        net.eval()
        x, _ = _batch()
        before = net(x)
        small, rec = reconfigure(net, opt, 1e-4)
        small.eval()
        assert {s: rec.widths_before[s] - rec.widths_after[s] for s in kills} == {s: len(c) for s, c in kills.items()}
        assert rec.removed_channels == sum(len(c) for c in kills.values()) + (2 if "s1" in kills else 0)  # s0 is one node with s1
        torch.testing.assert_close(small(x), before, rtol=1e-5, atol=1e-5)


def test_a_step_after_reconfiguration_equals_the_step_on_the_masked_dense_model() -> None:
    net, opt = _trained("resnet20")
    _kill(net, "s2", [1, 4])
    _kill(net, "b1.0.a", [0])
    sparsify(net, 1e-4)
    dense, dense_opt = copy.deepcopy(net), None
    dense_opt = make_sgd(dense, PruneTrainConfig())
    dense_opt.load_state_dict(opt.state_dict())  # same momentum buffers on the masked dense copy
    small, rec = reconfigure(net, opt, 1e-4)
    assert opt.param_groups[0]["params"] == list(small.parameters())  # the same optimizer trains the small net
    x, y = _batch()
    for model, o in ((dense, dense_opt), (small, opt)):
        model.train()
        o.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        o.step()
    from charbench.workloads.pruned_training.models import param_spaces
    from charbench.workloads.pruned_training.reconfig import slice_state

    spaces = param_spaces(dense)
    sliced = slice_state(dense.state_dict(), spaces, rec.keep)
    for name, t in small.state_dict().items():
        torch.testing.assert_close(t, sliced[name], rtol=1e-5, atol=1e-6, msg=name)
    dense_params = dict(dense.named_parameters())
    for name, p in small.named_parameters():
        expect = slice_state({name: dense_opt.state[dense_params[name]]["momentum_buffer"]}, spaces, rec.keep)[name]
        torch.testing.assert_close(opt.state[p]["momentum_buffer"], expect, rtol=1e-5, atol=1e-6, msg=name)


def test_a_block_whose_branch_lost_every_channel_becomes_empty_and_the_output_is_kept() -> None:
    from charbench.workloads.pruned_training.models import EmptyBlock, Net, param_spaces

    net, opt = _trained("resnet20")
    _kill(net, "b2.1.a", list(range(32)))  # an identity-shortcut block: removable
    _kill(net, "b2.0.a", list(range(32)))  # the stage's first block has a projection shortcut: keeps one channel
    sparsify(net, 1e-4)
    x, y = _batch()
    dense = copy.deepcopy(net)
    dense_opt = make_sgd(dense, PruneTrainConfig())
    dense_opt.load_state_dict(opt.state_dict())
    net.eval()
    before = net(x)
    small, rec = reconfigure(net, opt, 1e-4)
    small.eval()
    assert isinstance(small.blocks[4], EmptyBlock) and not any(isinstance(b, EmptyBlock) for i, b in enumerate(small.blocks) if i != 4)
    assert rec.widths_after["b2.1.a"] == 0 and rec.widths_after["b2.0.a"] == 1
    assert not any(n.startswith("blocks.4.layers") for n in small.state_dict())
    torch.testing.assert_close(small(x), before, rtol=1e-5, atol=1e-5)
    # a training step (batch statistics, running-statistics update, momentum) matches the masked dense net
    # on the kept BN (the dense net's zeroed weights get gradients and revive, so outputs are not compared)
    for model, o in ((dense, dense_opt), (small, opt)):
        model.train()
        o.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        o.step()
    kept, orig = small.blocks[4].bn, dense.blocks[4].layers[1].bn
    for name in ("weight", "bias", "running_mean", "running_var"):
        torch.testing.assert_close(getattr(kept, name), getattr(orig, name), rtol=1e-5, atol=1e-6, msg=name)
    torch.testing.assert_close(opt.state[kept.weight]["momentum_buffer"], dense_opt.state[orig.weight]["momentum_buffer"],
                               rtol=1e-5, atol=1e-6)
    # the small net rebuilds from its arch (checkpoint restore) and reconfigures again
    again = Net(small.arch)
    again.load_state_dict(small.state_dict())
    assert set(param_spaces(again)) == set(again.state_dict())
    smaller, rec2 = reconfigure(again, None, 1e-4)
    assert rec2.widths_after["b2.1.a"] == 0 and isinstance(smaller.blocks[4], EmptyBlock)
