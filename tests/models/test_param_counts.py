"""Parameter counts at the original input sizes equal REFERENCE.md section 5."""

from __future__ import annotations

import pytest
from torch import nn

from itop.models import list_models

from .helpers import REFERENCE_COUNTS, build_reference, linear_conv_weight_numel, reference_masked_names, total_numel


def test_every_registered_model_has_a_reference_row():
    assert sorted(REFERENCE_COUNTS) == list_models()


@pytest.mark.parametrize("name", sorted(REFERENCE_COUNTS))
def test_total_and_masked_counts_match_reference(name):
    _, total, masked = REFERENCE_COUNTS[name]
    model = build_reference(name)
    assert total_numel(model) == total
    if masked is not None:
        assert linear_conv_weight_numel(model) == masked


@pytest.mark.parametrize("name", sorted(REFERENCE_COUNTS))
def test_masked_set_is_the_same_by_module_type_and_by_the_original_name_rule(name):
    model = build_reference(name)
    params = dict(model.named_parameters())
    by_name = reference_masked_names(model)
    by_module = [f"{module_name}.weight" for module_name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert sorted(by_name) == sorted(by_module)
    assert sum(params[n].numel() for n in by_name) == linear_conv_weight_numel(model)


def test_cifar_resnet_head_has_no_bias_and_imagenet_head_has_one():
    assert build_reference("resnet18").classifier.bias is None
    assert build_reference("imagenet-resnet18").fc.bias is not None
