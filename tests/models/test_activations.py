"""SReLU and All-ReLU against piecewise formulas written here in plain Python, and their gradients."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck
from torch.func import functional_call

from itop.models.activations import AllReLU, SReLU

# Per neuron: (t_left, a_left, t_right as stored, a_right). Neuron 1 stores a negative t_right,
# neuron 2 a negative left slope and a right slope above 1.
SRELU_PARAMS = [(0.0, 0.2, 1.5, 1.0), (-1.0, 0.5, -2.0, 0.3), (0.5, -0.4, 0.25, 2.0)]


def srelu_reference(x: float, t_left: float, a_left: float, t_right: float, a_right: float) -> float:
    t_r = t_left + abs(t_right)
    if x >= t_r:
        return t_r + a_right * (x - t_r)
    if x <= t_left:
        return t_left + a_left * (x - t_left)
    return x


def allrelu_reference(x: float, slope: float) -> float:
    return x if x > 0 else slope * x


def srelu_with(params, dtype=torch.float32) -> SReLU:
    module = SReLU(len(params)).to(dtype)
    with torch.no_grad():
        for i, name in enumerate(("t_left", "a_left", "t_right", "a_right")):
            getattr(module, name).copy_(torch.tensor([p[i] for p in params], dtype=dtype))
    return module


# Inputs in every region of every neuron above, none on a kink (kinks at 0, 1.5, -1, 1, 0.5, 0.75).
XS = [-3.0, -1.7, -0.6, -0.3, 0.2, 0.6, 0.9, 1.2, 2.4, 4.0]


def test_srelu_matches_the_piecewise_formula():
    module = srelu_with(SRELU_PARAMS)
    x = torch.tensor([[v] * len(SRELU_PARAMS) for v in XS])
    y = module(x)
    for row, v in enumerate(XS):
        for j, params in enumerate(SRELU_PARAMS):
            assert y[row, j].item() == pytest.approx(srelu_reference(v, *params), abs=1e-6), (v, params)


def test_srelu_is_continuous_at_its_thresholds():
    module = srelu_with(SRELU_PARAMS)
    for j, (t_left, _, t_right, _) in enumerate(SRELU_PARAMS):
        for kink in (t_left, t_left + abs(t_right)):
            x = torch.zeros(3, len(SRELU_PARAMS))
            x[:, j] = torch.tensor([kink - 1e-4, kink, kink + 1e-4])
            values = module(x)[:, j]
            assert values[1].item() == pytest.approx(kink, abs=1e-6)
            assert (values - kink).abs().max().item() < 1e-3


def test_srelu_broadcasts_over_trailing_dimensions():
    module = srelu_with(SRELU_PARAMS)
    x = torch.tensor(XS).repeat(2, len(SRELU_PARAMS), 1)  # (2, 3, len(XS))
    y = module(x)
    assert y.shape == x.shape
    for j, params in enumerate(SRELU_PARAMS):
        for k, v in enumerate(XS):
            assert y[1, j, k].item() == pytest.approx(srelu_reference(v, *params), abs=1e-6)


def test_srelu_rejects_a_wrong_feature_count():
    with pytest.raises(ValueError, match=r"\(N, 3, \.\.\.\)"):
        SReLU(3)(torch.zeros(2, 4))


def test_srelu_initial_values_are_keras_contribs_and_seeded():
    torch.manual_seed(0)
    module = SReLU(2000)
    assert torch.all(module.t_left == 0) and torch.all(module.a_right == 1)
    assert 0 <= module.a_left.min() and module.a_left.max() < 1 and module.a_left.std() > 0.2
    assert 0 <= module.t_right.min() and module.t_right.max() < 5 and module.t_right.mean() > 2
    torch.manual_seed(0)
    again = SReLU(2000)
    assert torch.equal(module.a_left, again.a_left) and torch.equal(module.t_right, again.t_right)


def _srelu_call(module: SReLU):
    def call(x, t_left, a_left, t_right, a_right):
        params = {"t_left": t_left, "a_left": a_left, "t_right": t_right, "a_right": a_right}
        return functional_call(module, params, (x,))

    return call


def _srelu_inputs(trailing: tuple[int, ...] = ()):
    module = srelu_with(SRELU_PARAMS, dtype=torch.float64)
    params = [p.detach().clone().requires_grad_() for p in module.parameters()]
    x = torch.tensor(XS, dtype=torch.float64).repeat(len(SRELU_PARAMS), 1).T  # (len(XS), 3)
    if trailing:
        x = x.reshape(*x.shape, *(1,) * len(trailing)).repeat(1, 1, *trailing) + 0.01
    return module, [x.clone().requires_grad_(), *params]


@pytest.mark.parametrize("trailing", [(), (2,)])
def test_srelu_gradients_for_input_and_all_four_parameters(trailing):
    module, inputs = _srelu_inputs(trailing)
    assert gradcheck(_srelu_call(module), inputs)


def test_srelu_parameter_gradients_match_the_derivative_of_the_formula():
    module = srelu_with(SRELU_PARAMS)
    x = torch.tensor([[v] * len(SRELU_PARAMS) for v in XS])
    module(x).sum().backward()
    for j, (t_l, a_l, t_r, a_r) in enumerate(SRELU_PARAMS):
        right, sign = t_l + abs(t_r), (1.0 if t_r > 0 else -1.0)
        left_xs = [v for v in XS if v <= t_l]
        right_xs = [v for v in XS if v >= right]
        assert module.t_left.grad[j].item() == pytest.approx(len(left_xs) * (1 - a_l) + len(right_xs) * (1 - a_r))
        assert module.a_left.grad[j].item() == pytest.approx(sum(v - t_l for v in left_xs))
        assert module.t_right.grad[j].item() == pytest.approx(sign * len(right_xs) * (1 - a_r))
        assert module.a_right.grad[j].item() == pytest.approx(sum(v - right for v in right_xs))


def test_srelu_builds_on_meta_and_materialises_like_a_cpu_build():
    with torch.device("meta"):
        module = SReLU(5)
    assert all(p.is_meta for p in module.parameters())
    module.to_empty(device="cpu")
    torch.manual_seed(3)
    module.reset_parameters()
    torch.manual_seed(3)
    expected = SReLU(5)
    for got, want in zip(module.parameters(), expected.parameters()):
        assert not got.is_meta and torch.equal(got, want)
    assert torch.isfinite(module(torch.randn(2, 5))).all()


@pytest.mark.parametrize("slope", [-0.6, 0.6, 0.75, -0.75])
def test_allrelu_matches_the_piecewise_formula(slope):
    y = AllReLU(slope)(torch.tensor(XS + [0.0]))
    for got, v in zip(y.tolist(), XS + [0.0]):
        assert got == pytest.approx(allrelu_reference(v, slope), abs=1e-6)


def test_allrelu_negative_slope_flips_negative_inputs():
    y = AllReLU(-0.6)(torch.tensor([-2.0, 3.0]))
    assert y.tolist() == pytest.approx([1.2, 3.0])


@pytest.mark.parametrize("slope", [-0.6, 0.75])
def test_allrelu_gradient(slope):
    x = torch.tensor(XS, dtype=torch.float64).reshape(2, 5).requires_grad_()
    assert gradcheck(AllReLU(slope), (x,))
    AllReLU(slope)(x).sum().backward()
    assert x.grad.tolist() == [[1.0 if v > 0 else slope for v in row] for row in x.tolist()]


def test_allrelu_has_no_parameters_and_shows_its_slope():
    module = AllReLU(-0.6)
    assert list(module.parameters()) == []
    assert repr(module) == "AllReLU(slope=-0.6)"
