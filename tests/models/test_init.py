"""Initialisation: ImageNet ResNet `classic` (fan_out) vs `fanin`, and the WRN scheme."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from itop.models import create_model


def _convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def _fan_in(conv: nn.Conv2d) -> int:
    return conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]


def _fan_out(conv: nn.Conv2d) -> int:
    return conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]


@pytest.mark.parametrize(("init", "fan"), [("classic", _fan_out), ("fanin", _fan_in)])
def test_imagenet_resnet_conv_std_is_kaiming_with_the_chosen_fan(init, fan):
    torch.manual_seed(0)
    model = create_model("imagenet-resnet18", num_classes=1000, init=init)
    for conv in _convs(model):
        expected = math.sqrt(2.0 / fan(conv))
        assert conv.weight.std().item() == pytest.approx(expected, rel=0.05)
        assert conv.weight.mean().item() == pytest.approx(0.0, abs=0.05 * expected)


def test_fanin_and_classic_differ_where_fans_differ():
    torch.manual_seed(0)
    classic = create_model("imagenet-resnet50", init="classic")
    fanin = create_model("imagenet-resnet50", init="fanin")
    # layer1.0.conv3 is 64 -> 256 (1x1): fan_in 64, fan_out 256, so fanin's std is twice classic's.
    ratio = fanin.layer1[0].conv3.weight.std() / classic.layer1[0].conv3.weight.std()
    assert ratio.item() == pytest.approx(2.0, rel=0.05)
    # The stem (3 -> 64, 7x7) differs by sqrt(64 / 3).
    ratio = fanin.conv1.weight.std() / classic.conv1.weight.std()
    assert ratio.item() == pytest.approx(math.sqrt(64 / 3), rel=0.05)


def test_imagenet_resnet_batchnorm_starts_at_identity():
    model = create_model("imagenet-resnet50", init="fanin")
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)


def test_unknown_init_is_rejected():
    with pytest.raises(ValueError, match="classic, fanin"):
        create_model("imagenet-resnet18", init="xavier")


def test_wide_resnet_init_follows_the_original():
    torch.manual_seed(0)
    model = create_model("wrn-16-8")
    for conv in _convs(model):
        if conv.weight.numel() >= 2000:  # enough samples for a 5% check
            assert conv.weight.std().item() == pytest.approx(math.sqrt(2.0 / _fan_out(conv)), rel=0.05)
    assert torch.all(model.fc.bias == 0)
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)


def test_wide_resnet_dropout_is_active_in_training_only():
    torch.manual_seed(0)
    model = create_model("wrn-28-2", image_size=8)
    x = torch.randn(4, 3, 8, 8)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
