"""CondensedLinear and CondensedConv2d equal the masked dense layer: forward (numba kernels on one
thread and on the pool, PyTorch's path), gradients, ablated neurons, k = 0, conversions and state."""

from __future__ import annotations

import copy
import io
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from itop.sparse import condensed, condensed_ops, conv_dispatch, conv_ops, dispatch, native
from itop.sparse.condensed import CondensedLinear
from itop.sparse.condensed_conv import CondensedConv2d

NUMBA = condensed_ops.kernels() is not None
PATHS = ["torch"] + (["numba1", "numba2", "csr"] if NUMBA else [])
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}


def constant_fan_in_mask(out_features: int, width: int, fan_in: int, ablated=(), seed: int = 0) -> torch.Tensor:
    """An (out, width) mask with `fan_in` random active entries per row, none in the `ablated` rows."""
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.rand(out_features, width, generator=generator).topk(fan_in, dim=1).indices
    mask = torch.zeros(out_features, width, dtype=torch.bool).scatter_(1, chosen, True)
    mask[list(ablated)] = False
    return mask


def masked_linear(in_f, out_f, fan_in, ablated=(), bias=True, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    linear = nn.Linear(in_f, out_f, bias=bias).to(dtype)
    mask = constant_fan_in_mask(out_f, in_f, fan_in, ablated, seed)
    with torch.no_grad():
        linear.weight.mul_(mask)
        if bias:
            linear.bias.uniform_(-1, 1)  # ablated neurons output exactly this
    return linear, mask


@pytest.fixture
def path(request, monkeypatch):
    """Force a computation: PyTorch's path in chunks, PyTorch's CSR product, or the numba kernels on
    the calling thread or over two threads; records which kernels ran."""
    name = request.param
    monkeypatch.setattr(dispatch, "active", dispatch.Dispatcher(mode="torch" if name == "torch" else "numba"))
    calls: list[str] = []
    if name == "csr":
        monkeypatch.setattr(condensed, "choose", lambda layer, inputs: "csr")
        product = condensed_ops.csr_forward
        monkeypatch.setattr(condensed_ops, "csr_forward", lambda *args: calls.append("csr") or product(*args))
    elif name != "torch":
        threads = 1 if name == "numba1" else min(2, native.configured_threads())
        monkeypatch.setattr(native, "threads_for", lambda work: threads)
        kernel = condensed_ops.compiled
        monkeypatch.setattr(condensed_ops, "compiled", lambda label: calls.append(label) or kernel(label))
    yield name, calls
    assert not condensed_ops._broken  # no kernel failed to compile and left its work to PyTorch


def expected_kernel(path_name: str, batch: int) -> list[str]:
    if path_name in ("torch", "csr"):
        return [path_name] if path_name == "csr" else []
    form = "_rows" if path_name == "numba1" or native.configured_threads() == 1 else "_parallel"
    return [condensed_ops.kernel_for(batch) + form]


# ----------------------------------------------------------------------------- Linear: forward
@pytest.mark.parametrize("path", PATHS, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batch", [(1,), (2,), (3,), (7,), (128,), (3, 4), ()])
def test_forward_equals_the_masked_dense_layer(path, dtype, bias, batch):
    linear, mask = masked_linear(70, 45, 9, ablated=(0, 13, 44), bias=bias, dtype=dtype)
    layer = CondensedLinear.from_dense(linear, mask)
    x = torch.randn(*batch, 70, dtype=dtype)
    with torch.no_grad():
        out, reference = layer(x), linear(x)
    assert out.shape == reference.shape == (*batch, 45) and out.dtype == dtype
    torch.testing.assert_close(out, reference, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])
    assert torch.equal(out[..., 13], reference[..., 13])  # an ablated neuron: its bias (or 0), exactly
    rows = 1 if not batch else int(torch.tensor(batch).prod())
    assert path[1] == expected_kernel(path[0], rows)


@pytest.mark.parametrize("path", PATHS, indirect=True)
@pytest.mark.parametrize("bias", [True, False])
def test_every_neuron_ablated_outputs_the_bias(path, bias):
    linear, mask = masked_linear(30, 12, 4, ablated=range(12), bias=bias)
    layer = CondensedLinear.from_dense(linear, mask)
    assert layer.fan_in == 0 and layer.rows_kept == 0 and layer.values.shape == (0, 0)
    for batch in (1, 5):
        x = torch.randn(batch, 30, dtype=torch.float64)
        with torch.no_grad():
            assert torch.equal(layer(x), linear(x))
    x = torch.randn(4, 30, dtype=torch.float64, requires_grad=True)
    layer(x).sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    assert layer.to_dense().weight.abs().sum() == 0


@pytest.mark.parametrize("path", [p for p in PATHS if p.startswith("numba")], indirect=True)
def test_inputs_beyond_uint16_use_the_int32_indices(path):
    """Up to 65,536 inputs the kernels read a uint16 copy of the indices; beyond, the buffer itself."""
    linear, mask = masked_linear(70_000, 6, 5, ablated=(2,), dtype=torch.float32)
    layer = CondensedLinear.from_dense(linear, mask)
    assert layer._prepared(layer.values).arrays[1].dtype == np.int32
    assert (small := CondensedLinear(100, 3, fan_in=2))._prepared(small.values).arrays[1].dtype == np.uint16
    for batch in (1, 2, 7):
        x = torch.randn(batch, 70_000)
        with torch.no_grad():
            torch.testing.assert_close(layer(x), linear(x), rtol=1e-5, atol=1e-5)
    assert [call.split("_")[0] for call in path[1]] == ["vector", "pairs", "batch"]


@pytest.mark.skipif(not NUMBA, reason="numba is not installed")
@pytest.mark.parametrize("batch", [1, 2, 5, 9, 64])
def test_one_thread_and_the_pool_give_the_same_numbers(monkeypatch, batch):
    linear, mask = masked_linear(300, 200, 31, ablated=(7,), dtype=torch.float32)
    layer = CondensedLinear.from_dense(linear, mask)
    x = torch.randn(batch, 300)
    results = []
    for how in ("numba1", "numba"):
        monkeypatch.setattr(condensed, "choose", lambda layer, inputs: how)
        with torch.no_grad():
            results.append(layer(x))
    assert torch.equal(*results)


def test_the_pytorch_path_in_many_chunks_gives_the_same_output_and_gradients(monkeypatch):
    monkeypatch.setattr(dispatch, "active", dispatch.Dispatcher(mode="torch"))
    linear, mask = masked_linear(40, 33, 6, ablated=(2, 3))
    layer = CondensedLinear.from_dense(linear, mask)
    x = torch.randn(5, 40, dtype=torch.float64, requires_grad=True)
    whole = layer(x)
    (grad_x,) = torch.autograd.grad(whole.square().sum(), x)
    monkeypatch.setattr(condensed_ops, "CHUNK_ELEMENTS", 64)  # two rows a chunk
    assert condensed_ops._chunk_rows(5, 6) == 2
    chunked = layer(x)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-14)
    torch.testing.assert_close(torch.autograd.grad(chunked.square().sum(), x)[0], grad_x, rtol=0, atol=1e-13)


@pytest.mark.skipif(not NUMBA, reason="numba is not installed")
def test_the_way_is_measured_once_per_shape_class(monkeypatch, tmp_path):
    chooser = dispatch.Dispatcher(mode="auto", path=tmp_path / "kernels.json")
    monkeypatch.setattr(dispatch, "active", chooser)
    linear, mask = masked_linear(1000, 300, 250, ablated=(3,), dtype=torch.float32)
    layer = CondensedLinear.from_dense(linear, mask)
    for batch in (1, 2, 16):  # each at least dispatch.MIN_PROBE_WORK multiply-adds
        x = torch.randn(batch, 1000)
        with torch.no_grad():
            torch.testing.assert_close(layer(x), linear(x), rtol=1e-5, atol=1e-5)
        key = condensed_ops.decision_key(layer, batch, torch.float32)
        assert chooser.decisions[key] in condensed_ops.candidates(batch) and set(chooser.timings[key]) == set(
            condensed_ops.candidates(batch)
        )
        assert ("csr" in chooser.timings[key]) == (batch >= condensed_ops.CSR_MIN_BATCH)
        assert dispatch.decode(dispatch.encode(key)) == key  # and survives the cache file
    probes = chooser.probes
    with torch.no_grad():
        layer(torch.randn(12, 1000))  # the class of 16: decided
    assert chooser.probes == probes
    small = CondensedLinear.from_dense(*masked_linear(20, 10, 3, dtype=torch.float32))
    with torch.no_grad():
        small(torch.randn(8, 20))  # too small to be worth a probe: the fixed rule
    assert chooser.probes == probes
    assert condensed_ops.fixed_rule(1, 10) == condensed_ops.fixed_rule(condensed_ops.CSR_MIN_BATCH - 1, 10) == "numba1"
    assert condensed_ops.fixed_rule(condensed_ops.CSR_MIN_BATCH, 10**9) == "csr"


@pytest.mark.skipif(not NUMBA, reason="numba is not installed")
def test_a_kernel_numba_cannot_compile_falls_back_to_pytorch(monkeypatch):
    monkeypatch.setattr(dispatch, "active", dispatch.Dispatcher(mode="numba"))
    monkeypatch.setattr(condensed_ops, "_broken", set())
    monkeypatch.setattr(condensed, "choose", lambda layer, inputs: "numba1")

    def refuse(*args):
        raise TypeError("no implementation for these types")

    monkeypatch.setattr(condensed_ops, "compiled", lambda name: refuse)
    linear, mask = masked_linear(20, 10, 3)
    layer = CondensedLinear.from_dense(linear, mask)
    x = torch.randn(1, 20, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), linear(x), rtol=1e-10, atol=1e-10)
    assert condensed_ops._broken == {("vector", np.dtype("float64"), np.dtype("uint16"))}  # PyTorch serves it from now on


# ----------------------------------------------------------------------------- Linear: gradients
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batch", [(1,), (6,), (2, 3)])
def test_gradients_equal_the_masked_dense_layers(bias, batch):
    linear, mask = masked_linear(50, 40, 7, ablated=(5, 6, 39), bias=bias)
    layer = CondensedLinear.from_dense(linear, mask)
    x = torch.randn(*batch, 50, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    out, reference = layer(x), linear(x_ref)
    torch.testing.assert_close(out, reference, rtol=1e-10, atol=1e-10)
    grad = torch.randn_like(reference)
    out.backward(grad)
    reference.backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-10, atol=1e-10)
    active = linear.weight.grad[layer.rows[:, None], layer.indices.long()]
    torch.testing.assert_close(layer.values.grad, active, rtol=1e-10, atol=1e-10)
    if bias:
        torch.testing.assert_close(layer.bias.grad, linear.bias.grad, rtol=1e-10, atol=1e-10)


def test_a_few_optimizer_steps_train_like_the_masked_dense_layer():
    linear, mask = masked_linear(30, 20, 5, ablated=(1,))
    layer = CondensedLinear.from_dense(linear, mask)
    dense_opt = torch.optim.SGD(linear.parameters(), lr=0.1)
    condensed_opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    generator = torch.Generator().manual_seed(3)
    for _ in range(3):
        x = torch.randn(8, 30, dtype=torch.float64, generator=generator)
        for module, optimizer in ((linear, dense_opt), (layer, condensed_opt)):
            optimizer.zero_grad()
            module(x).square().mean().backward()
            optimizer.step()
        with torch.no_grad():
            linear.weight.mul_(mask)  # the masked layer keeps its zeros
    with torch.no_grad():
        x = torch.randn(4, 30, dtype=torch.float64)
        torch.testing.assert_close(layer(x), linear(x), rtol=1e-10, atol=1e-10)  # the kernels read the updated values


# ----------------------------------------------------------------------------- Linear: conversions, state
def test_from_dense_and_to_dense_round_trip_exactly():
    linear, mask = masked_linear(64, 24, 10, ablated=(3, 9), dtype=torch.float32)
    layer = CondensedLinear.from_dense(linear, mask)
    assert layer.indices.dtype == torch.int32 and layer.rows.dtype == torch.int64
    assert layer.values.shape == layer.indices.shape == (22, 10) and layer.fan_in == 10 and layer.rows_kept == 22
    assert torch.equal(layer.rows, torch.tensor([r for r in range(24) if r not in (3, 9)]))
    assert bool((layer.indices.diff(dim=1) > 0).all())  # ascending in every row
    back = layer.to_dense()
    assert torch.equal(back.weight, linear.weight) and torch.equal(back.bias, linear.bias)
    assert "fan_in=10" in repr(layer) and "rows_kept=22/24" in repr(layer) and "in_features=64" in repr(layer)


@pytest.mark.parametrize(
    "counts, message",
    [
        ((12, 13, 80), "has 3 different fan-ins (12, 13, 80): CondensedLinear needs the same count on every neuron"),
        ((5, 1), "2 different fan-ins (1, 5)"),
    ],
)
def test_a_mask_without_constant_fan_in_is_refused_in_one_line(counts, message):
    linear = nn.Linear(100, len(counts) + 1)
    mask = torch.zeros(len(counts) + 1, 100, dtype=torch.bool)
    for row, count in enumerate(counts):
        mask[row, :count] = True
    with pytest.raises(ValueError) as error:
        CondensedLinear.from_dense(linear, mask)
    assert message in str(error.value) and "Linear(100, " in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: CondensedLinear.from_dense(nn.Linear(10, 5), torch.ones(10, 5, dtype=torch.bool)), "does not match the weight's (5, 10)"),
        (lambda: CondensedLinear(10, 5, fan_in=11), "fan_in must be an integer in [0, 10]"),
        (lambda: CondensedLinear(10, 5, fan_in=3)(torch.randn(2, 9)), "expects inputs of shape (..., 10)"),
        (
            lambda: CondensedLinear.from_values(10, 5, torch.tensor([0, 7]), torch.zeros(2, 1, dtype=torch.int64), torch.ones(2, 1)),
            "outside [0, 5)",
        ),
        (
            lambda: CondensedLinear.from_values(10, 5, torch.tensor([3, 1]), torch.zeros(2, 1, dtype=torch.int64), torch.ones(2, 1)),
            "rows are not strictly ascending",
        ),
        (
            lambda: CondensedLinear.from_values(10, 5, torch.tensor([1]), torch.tensor([[4, 2]]), torch.ones(1, 2)),
            "not strictly ascending in every row",
        ),
        (
            lambda: CondensedLinear.from_values(10, 5, torch.tensor([1]), torch.tensor([[4, 12]]), torch.ones(1, 2)),
            "indices fall outside [0, 10)",
        ),
    ],
)
def test_bad_arguments_are_refused_in_one_line(build, message):
    with pytest.raises(ValueError) as error:
        build()
    assert message in str(error.value) and "\n" not in str(error.value)


def test_state_dict_loads_with_weights_only_into_a_fresh_layer_of_another_k():
    linear, mask = masked_linear(60, 30, 8, ablated=(0, 29), dtype=torch.float32)
    saved = CondensedLinear.from_dense(linear, mask)
    buffer = io.BytesIO()
    torch.save(saved.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    fresh = CondensedLinear(60, 30, fan_in=3, generator=torch.Generator().manual_seed(1))
    assert fresh.rows_kept == 30 and fresh.fan_in == 3
    x = torch.randn(5, 60)
    with torch.no_grad():
        fresh(x)  # its kernel views are made, and must follow the load
    fresh.load_state_dict(state)
    assert fresh.fan_in == 8 and fresh.rows_kept == 28 and fresh.indices.dtype == torch.int32
    with torch.no_grad():
        assert torch.equal(fresh(x), saved(x))
        torch.testing.assert_close(fresh(x), linear(x), rtol=1e-5, atol=1e-5)


def test_a_state_with_indices_out_of_range_is_refused():
    state = CondensedLinear(60, 30, fan_in=4).state_dict()
    with pytest.raises(RuntimeError, match="indices fall outside"):
        CondensedLinear(20, 30, fan_in=4).load_state_dict(state)


def test_copies_pickles_and_dtype_moves_compute_the_same():
    linear, mask = masked_linear(40, 20, 5, ablated=(4,), dtype=torch.float32)
    layer = CondensedLinear.from_dense(linear, mask)
    x = torch.randn(3, 40)
    with torch.no_grad():
        out = layer(x)
        for other in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
            assert torch.equal(other(x), out)
        double = copy.deepcopy(layer).double()
        torch.testing.assert_close(double(x.double()), out.double(), rtol=1e-5, atol=1e-5)
        layer.values.mul_(2)  # in place, as an optimizer: the kernels see it
        torch.testing.assert_close(layer(x) - layer.bias, 2 * (out - layer.bias), rtol=1e-5, atol=1e-5)
        layer.indices[0] = torch.arange(layer.fan_in, dtype=torch.int32) * 3  # in place: the kernels' copy follows
        torch.testing.assert_close(layer(x), layer.to_dense()(x), rtol=1e-5, atol=1e-5)


def test_the_random_initialisation_keeps_k_per_neuron():
    layer = CondensedLinear(100, 30, fan_in=12, generator=torch.Generator().manual_seed(0))
    assert layer.values.shape == (30, 12) and layer.values.abs().max() <= 1 / 12**0.5
    assert bool((layer.indices.diff(dim=1) > 0).all()) and int(layer.indices.max()) < 100
    again = CondensedLinear(100, 30, fan_in=12, generator=torch.Generator().manual_seed(0))
    assert torch.equal(layer.indices, again.indices) and torch.equal(layer.values, again.values)


# ----------------------------------------------------------------------------- Conv2d
GEOMETRIES = [  # (in, out, kernel, stride, padding, dilation, groups)
    (3, 8, 3, 1, 1, 1, 1),
    (4, 6, 3, 2, 1, 1, 1),
    (5, 7, 4, 1, "same", 1, 1),
    (4, 6, 3, 1, 2, 2, 1),
    (4, 6, 3, 1, 1, 1, 2),
    (6, 8, 1, 1, 0, 1, 1),
    (4, 4, (3, 5), (2, 1), "valid", 1, 1),
]


def masked_conv(geometry, fan_in, ablated=(), bias=True, dtype=torch.float64, seed=0):
    cin, cout, kernel, stride, padding, dilation, groups = geometry
    torch.manual_seed(seed)
    conv = nn.Conv2d(cin, cout, kernel, stride, padding, dilation, groups, bias=bias).to(dtype)
    mask = constant_fan_in_mask(cout, conv.weight[0].numel(), fan_in, ablated, seed).view(conv.weight.shape)
    with torch.no_grad():
        conv.weight.mul_(mask)
        if bias:
            conv.bias.uniform_(-1, 1)
    return conv, mask


@pytest.mark.filterwarnings("ignore:Using padding='same'")  # PyTorch's, for the dense reference
@pytest.mark.parametrize("way", ["direct", "im2col", "dense"])
@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("bias", [True, False])
def test_conv_equals_the_masked_dense_convolution(monkeypatch, way, geometry, bias):
    if way == "direct" and conv_ops.conv_kernels() is None:
        pytest.skip("numba is not installed")
    ways = []
    monkeypatch.setattr(conv_dispatch, "choose", lambda layer, x, train: ways.append(way) or way)
    conv, mask = masked_conv(geometry, fan_in=3, ablated=(1,), bias=bias)
    layer = CondensedConv2d.from_dense(conv, mask)
    assert layer.rows_kept == geometry[1] - 1 and layer.fan_in == 3
    x = torch.randn(2, geometry[0], 9, 11, dtype=torch.float64)
    x_ref = x.clone().requires_grad_()
    x.requires_grad_()
    out, reference = layer(x), conv(x_ref)
    torch.testing.assert_close(out, reference, rtol=1e-10, atol=1e-10)
    assert torch.equal(out[:, 1], reference[:, 1])  # the ablated channel: its bias (or 0)
    grad = torch.randn_like(reference)
    out.backward(grad)
    reference.backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-10, atol=1e-10)
    active = conv.weight.grad.reshape(conv.out_channels, -1)[layer.rows[:, None], layer.taps.long()]
    torch.testing.assert_close(layer.values.grad, active, rtol=1e-10, atol=1e-10)
    if bias:
        torch.testing.assert_close(layer.bias.grad, conv.bias.grad, rtol=1e-10, atol=1e-10)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), reference, rtol=1e-10, atol=1e-10)
    assert ways == [way, way]


def test_conv_in_float32_and_the_measured_choice():
    conv, mask = masked_conv((8, 16, 3, 1, 1, 1, 1), fan_in=10, ablated=(0, 15), dtype=torch.float32)
    layer = CondensedConv2d.from_dense(conv, mask)
    x = torch.randn(4, 8, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), conv(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer(x), conv(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bias", [True, False])
def test_conv_with_every_channel_ablated_outputs_the_bias(bias):
    conv, mask = masked_conv((3, 5, 3, 2, 1, 1, 1), fan_in=2, ablated=range(5), bias=bias)
    layer = CondensedConv2d.from_dense(conv, mask)
    assert layer.fan_in == 0 and layer.sparse_layer() is None
    x = torch.randn(2, 3, 7, 8, dtype=torch.float64)
    assert torch.equal(layer(x), conv(x).detach())


def test_conv_round_trip_state_and_structure_cache():
    conv, mask = masked_conv((4, 6, 3, 1, "same", 1, 2), fan_in=5, ablated=(2,), dtype=torch.float32)
    layer = CondensedConv2d.from_dense(conv, mask)
    back = layer.to_dense()
    assert torch.equal(back.weight, conv.weight) and torch.equal(back.bias, conv.bias)
    assert (back.padding, back.groups, back.stride) == (conv.padding, conv.groups, conv.stride)
    assert layer.taps.dtype == torch.int32 and "fan_in=5" in repr(layer) and "rows_kept=5/6" in repr(layer)
    inner = layer.sparse_layer()
    assert layer.sparse_layer() is inner  # kept while rows and taps stay
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    fresh = CondensedConv2d(4, 6, 3, padding="same", groups=2, fan_in=1)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        assert torch.equal(fresh(x), layer(x))
        torch.testing.assert_close(pickle.loads(pickle.dumps(fresh))(x), layer(x))
    layer.taps[0, 0] = 1 - layer.taps[0, 0]  # an in-place change of the taps rebuilds the structure
    assert layer.sparse_layer() is not inner


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: CondensedConv2d(4, 8, 3, padding_mode="reflect", fan_in=2), "padding_mode='reflect' is not supported"),
        (lambda: CondensedConv2d.from_dense(nn.Conv2d(4, 8, 3, padding_mode="reflect"), torch.ones(8, 4, 3, 3)), "padding_mode='reflect'"),
        (lambda: CondensedConv2d(4, 8, 3, groups=3, fan_in=2), "CondensedConv2d: groups=3 must divide"),
        (lambda: CondensedConv2d(4, 8, 3, fan_in=37), "fan_in must be an integer in [0, 36]"),
        (lambda: CondensedConv2d(4, 8, 3, fan_in=2)(torch.randn(1, 3, 5, 5)), "expects inputs of shape (N, 4, H, W)"),
    ],
)
def test_conv_bad_options_are_refused_in_one_line(build, message):
    with pytest.raises(ValueError) as error:
        build()
    assert message in str(error.value) and "\n" not in str(error.value)


def test_conv_mask_without_constant_fan_in_is_refused_in_one_line():
    conv = nn.Conv2d(2, 3, 3)
    mask = torch.zeros(3, 2, 3, 3, dtype=torch.bool)
    mask[0, 0, 0, :2] = True
    mask[2, 1, :, :] = True
    with pytest.raises(ValueError) as error:
        CondensedConv2d.from_dense(conv, mask)
    text = str(error.value)
    assert "2 different fan-ins (2, 9)" in text and "every output channel" in text and "\n" not in text
