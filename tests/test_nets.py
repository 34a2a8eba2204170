"""Backbones and weighting net: exact parameter counts, structure, initialisation, shapes."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mwnet.config import BackboneSpec
from mwnet.nets import WeightingNet, WideResNet, build_backbone

pytestmark = pytest.mark.usefixtures("single_thread")

RESNET32 = BackboneSpec(name="resnet", depth=32, width=16, dropout=0.0)
WRN28_10 = BackboneSpec(name="wrn", depth=28, width=10, dropout=0.0)


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize(
    "spec,num_classes,expected",
    [
        # Published figures: ResNet-32 0.46M, WRN-28-10 36.5M (CIFAR-10).
        (RESNET32, 10, 464_154),
        (RESNET32, 100, 470_004),
        (WRN28_10, 10, 36_479_194),
        (WRN28_10, 100, 36_536_884),
    ],
)
def test_parameter_counts(spec, num_classes, expected):
    assert n_params(build_backbone(spec, num_classes)) == expected


def test_resnet32_structure_and_init():
    torch.manual_seed(0)
    m = build_backbone(RESNET32, 10)
    convs = [c for c in m.modules() if isinstance(c, nn.Conv2d)]
    assert len(convs) == 31  # 1 stem + 3 stages x 5 blocks x 2; option-A shortcuts have no conv
    assert all(c.bias is None for c in convs)
    assert {c.kernel_size for c in convs} == {(3, 3)}
    assert m.linear.in_features == 64
    for bn in (b for b in m.modules() if isinstance(b, nn.BatchNorm2d)):
        assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and torch.equal(bn.bias, torch.zeros_like(bn.bias))
    # Kaiming normal, fan-in: std sqrt(2 / (k*k*in)); a wide layer gives a tight sample estimate.
    c = m.layer3[0].conv1  # 32 -> 64: fan-in and fan-out differ
    assert c.weight.std().item() == pytest.approx(math.sqrt(2 / (9 * 32)), rel=0.03)
    assert m.linear.weight.std().item() == pytest.approx(math.sqrt(2 / 64), rel=0.1)
    out = m(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)


def test_resnet_shortcut_option_a():
    """Entering a new stage the shortcut is x[:, :, ::2, ::2] with zero channels on both sides."""
    torch.manual_seed(0)
    block = build_backbone(RESNET32, 10).layer2[0]
    x = torch.randn(2, 16, 8, 8)
    s = block.shortcut(x)
    assert s.shape == (2, 32, 4, 4)
    torch.testing.assert_close(s[:, 8:24], x[:, :, ::2, ::2])
    assert s[:, :8].abs().sum() == 0 and s[:, 24:].abs().sum() == 0
    assert n_params(block.shortcut) == 0


def test_wrn_structure_and_init():
    torch.manual_seed(0)
    m = build_backbone(BackboneSpec(name="wrn", depth=16, width=4, dropout=0.3), 10)
    assert isinstance(m, WideResNet)
    assert len(m.block1) == 2 and m.fc.in_features == 256
    shortcuts = [b.shortcut for g in (m.block1, m.block2, m.block3) for b in g if b.shortcut is not None]
    assert len(shortcuts) == 3 and all(s.kernel_size == (1, 1) for s in shortcuts)
    assert all(c.bias is None for c in m.modules() if isinstance(c, nn.Conv2d))
    assert m.block1[0].dropout == 0.3
    # N(0, sqrt(2 / (k*k*out))): note out, not in.
    c = m.block3[0].conv1  # 128 -> 256: fan-in and fan-out differ
    assert c.weight.std().item() == pytest.approx(math.sqrt(2 / (9 * 256)), rel=0.03)
    assert torch.equal(m.fc.bias, torch.zeros_like(m.fc.bias))
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert m(torch.randn(2, 3, 8, 8)).shape == (2, 10)  # adaptive pool: small inputs work


def test_wrn_dropout_is_active_only_in_training():
    torch.manual_seed(0)
    m = build_backbone(BackboneSpec(name="wrn", depth=10, width=1, dropout=0.5), 3)
    x = torch.randn(4, 3, 8, 8)
    m.eval()
    assert torch.equal(m(x), m(x))
    m.train()
    assert not torch.equal(m(x), m(x))


@pytest.mark.parametrize("shape,hidden", [("1-100-1", [100]), ("1-10-10-10-1", [10, 10, 10]), ("1-1", [])])
def test_weighting_net_shapes(shape, hidden):
    torch.manual_seed(0)
    v = WeightingNet(shape)
    linears = [m for m in v.modules() if isinstance(m, nn.Linear)]
    assert [l.out_features for l in linears] == hidden + [1]
    assert linears[0].in_features == 1
    assert sum(isinstance(m, nn.ReLU) for m in v.modules()) == len(hidden)
    w = v(torch.linspace(0, 10, 50)[:, None])
    assert w.shape == (50, 1) and (w > 0).all() and (w < 1).all()


def test_weighting_net_default_linear_init():
    """Default PyTorch Linear init: weight and bias uniform in +-1/sqrt(fan_in)."""
    torch.manual_seed(0)
    v = WeightingNet("1-100-1")
    first, last = v.layers[0], v.layers[-1]
    assert first.weight.abs().max() <= 1.0 and first.weight.abs().max() > 0.9
    assert last.weight.abs().max() <= 0.1 and last.weight.abs().max() > 0.09


@pytest.mark.parametrize("bad", ["", "1-100", "2-100-1", "1-0-1", "1--1", "1-a-1", "100"])
def test_malformed_shape_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="malformed"):
        WeightingNet(bad)
