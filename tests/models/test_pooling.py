"""The zoo's 2x2 max pooling: the numbers of F.max_pool2d, its gradient where one is recorded."""

import pytest
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from itop.models import create_model
from itop.models.pooling import MaxPool2x2, max_pool_2x2


@pytest.mark.parametrize("shape", [(3, 5, 8, 8), (2, 4, 7, 9), (1, 1, 2, 3), (6, 5, 4), (2, 3, 33, 2)])
def test_equals_max_pool2d_without_autograd(shape):
    x = torch.randn(shape, dtype=torch.float64)
    x.view(-1)[::7] = float("nan")
    x.view(-1)[3::11] = float("-inf")
    x.view(-1)[5::13] = 0.0
    with torch.no_grad():
        expected = F.max_pool2d(x, 2)
        for given in (x, x.transpose(-1, -2).contiguous().transpose(-1, -2)):  # contiguous and not
            got = max_pool_2x2(given)
            assert got.shape == expected.shape and torch.equal(got.isnan(), expected.isnan())
            assert torch.equal(got.nan_to_num(), expected.nan_to_num())
    with torch.inference_mode():
        assert torch.equal(max_pool_2x2(x).nan_to_num(), expected.nan_to_num())


def test_without_autograd_the_maxima_serve_and_with_it_max_pool2d(monkeypatch):
    from itop.models import pooling

    calls, original = [], F.max_pool2d
    monkeypatch.setattr(pooling.F, "max_pool2d", lambda x, k: calls.append(k) or original(x, k))
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    with torch.no_grad():
        max_pool_2x2(x)
    max_pool_2x2(x.detach())
    assert calls == []
    max_pool_2x2(x)
    assert calls == [2]


def test_the_gradient_is_max_pool2d_s_ties_included():
    """Where autograd records, max_pool2d itself runs: a tied window sends its gradient to its first maximum."""
    x = torch.randn(2, 3, 6, 6)
    x[:, :, :2, :2] = 1.0  # a tied window
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    weights = torch.randn(2, 3, 3, 3)
    (max_pool_2x2(a) * weights).sum().backward()
    (F.max_pool2d(b, 2) * weights).sum().backward()
    assert torch.equal(a.grad, b.grad)


def test_a_plane_smaller_than_the_window_is_refused_as_max_pool2d_does():
    with torch.no_grad(), pytest.raises(RuntimeError):
        max_pool_2x2(torch.randn(1, 2, 1, 5))


def test_the_module_is_a_max_pool2d_and_vgg_computes_as_before():
    pool = MaxPool2x2()
    assert isinstance(pool, nn.MaxPool2d) and pool.kernel_size == 2 and pool.stride == 2
    torch.manual_seed(0)
    model = create_model("vgg-c", num_classes=10).eval()
    reference = create_model("vgg-c", num_classes=10).eval()
    reference.load_state_dict(model.state_dict())
    for index, module in enumerate(reference.features):
        if isinstance(module, MaxPool2x2):
            reference.features[index] = nn.MaxPool2d(2, 2)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit's own
@pytest.mark.parametrize("name, shape", [("vgg-c", (3, 32, 32)), ("lenet5", (1, 28, 28))])
def test_scripted_traced_and_fx_graphs_hold_max_pool2d(name, shape):
    """TorchScript, torch.jit.trace and torch.fx take F.max_pool2d, as before the maxima: one path in
    a graph (jit.trace's check, which reruns without grad, had found two)."""
    model = create_model(name, num_classes=10).eval()
    x = torch.randn(2, *shape)
    with torch.no_grad():
        expected = model(x)
    graphs = [torch.jit.script(model), torch.jit.trace(model, x), torch.fx.symbolic_trace(model)]
    assert "max_pool2d" in graphs[2].code
    with torch.no_grad():
        for graph in graphs:
            assert torch.equal(graph(x), expected)
