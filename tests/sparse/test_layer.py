import copy
import io
import pickle

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from itop.sparse import SparseLinear, dispatch, native, ops
from itop.sparse.structure import SparseStructure

BACKENDS = ["torch", "dense"] + (["numba"] if native.AVAILABLE else [])


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """Run a test with each forced kernel mode (ITOP_KERNELS=torch, dense, numba where installed)."""
    monkeypatch.setattr(dispatch, "active", dispatch.Dispatcher(mode=request.param))
    return request.param


def masked_reference(layer: SparseLinear):
    """The same layer as a dense weight with zeros off the active positions (float64)."""
    dense = layer.to_dense()
    return dense.weight.detach().clone().requires_grad_(), None if dense.bias is None else dense.bias.detach().clone().requires_grad_()


@settings(max_examples=25)
@pytest.mark.parametrize("kernels", BACKENDS)
@given(
    in_f=st.integers(1, 40),
    out_f=st.integers(1, 40),
    share=st.floats(0.01, 1.0),
    batch=st.sampled_from([(1,), (2,), (5,), (3, 4), (2, 1, 3), (40,), (4, 9)]),
    bias=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_forward_and_both_gradients_equal_masked_dense_autograd(kernels, in_f, out_f, share, batch, bias, seed):
    dispatch.active, saved = dispatch.Dispatcher(mode=kernels), dispatch.active
    try:
        check_against_masked_dense(in_f, out_f, share, batch, bias, seed)
    finally:
        dispatch.active = saved


def check_against_masked_dense(in_f, out_f, share, batch, bias, seed):
    torch.manual_seed(seed)
    nnz = max(1, round(share * in_f * out_f))
    layer = SparseLinear(in_f, out_f, nnz=nnz, bias=bias).double()
    weight, b = masked_reference(layer)
    x = torch.randn(*batch, in_f, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    out = layer(x)
    ref = nn.functional.linear(x_ref, weight, b)
    assert out.shape == ref.shape == (*batch, out_f)
    grad = torch.randn_like(ref)
    out.backward(grad)
    ref.backward(grad)
    assert torch.allclose(out, ref, atol=1e-6)
    assert torch.allclose(x.grad, x_ref.grad, atol=1e-6)
    assert torch.allclose(layer.values.grad, weight.grad.reshape(-1)[layer.indices], atol=1e-6)
    if bias:
        assert torch.allclose(layer.bias.grad, b.grad, atol=1e-6)


def test_float32_matches_and_batches_below_eight_rows_too(backend):
    torch.manual_seed(0)
    layer = SparseLinear(300, 200, nnz=3000)
    weight, b = masked_reference(layer)
    for rows in (1, 2, 7, 8, 33):
        layer.zero_grad()
        x = torch.randn(rows, 300)
        layer(x).sum().backward()
        expected = torch.ones(rows, 200).t() @ x
        assert torch.allclose(layer.values.grad, expected.reshape(-1)[layer.indices], atol=1e-4)


def test_exact_count_uniform_positions_and_fan_in_initialisation():
    torch.manual_seed(1)
    layer = SparseLinear(1000, 500, nnz=25_000)
    assert layer.nnz == 25_000 and layer.weight_indices() is layer.indices
    assert torch.equal(layer.indices, torch.unique(layer.indices))
    assert 0 <= int(layer.indices.min()) and int(layer.indices.max()) < 500_000
    rows = layer.indices // 1000
    assert torch.bincount(rows, minlength=500).float().std() < 10  # about 50 per row, binomial spread
    bound = 1 / (25_000 / 500) ** 0.5  # 1/sqrt(actual fan-in of 50), not 1/sqrt(1000)
    assert layer.values.abs().max() <= bound and layer.values.abs().max() > 0.9 * bound


def test_bad_nnz_is_refused():
    with pytest.raises(ValueError, match="nnz"):
        SparseLinear(3, 2, nnz=7)
    with pytest.raises(ValueError, match="nnz"):
        SparseLinear(3, 2, nnz=0)


def test_from_dense_to_dense_round_trip():
    torch.manual_seed(2)
    linear = nn.Linear(30, 20)
    mask = torch.rand(20, 30) < 0.2
    layer = SparseLinear.from_dense(linear, mask)
    assert layer.nnz == int(mask.sum())
    back = layer.to_dense()
    assert type(back) is nn.Linear
    assert torch.equal(back.weight, linear.weight * mask)
    assert torch.equal(back.bias, linear.bias)
    x = torch.randn(4, 30)
    assert torch.allclose(layer(x), nn.functional.linear(x, linear.weight * mask, linear.bias), atol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        SparseLinear.from_dense(linear, mask.t())


def test_state_dict_loads_with_weights_only_into_a_layer_of_another_count():
    torch.manual_seed(3)
    saved = SparseLinear(50, 40, nnz=300)
    buffer = io.BytesIO()
    torch.save(saved.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    other = SparseLinear(50, 40, nnz=120)
    other.load_state_dict(state)
    assert other.nnz == 300 and torch.equal(other.indices, saved.indices) and torch.equal(other.values, saved.values)
    x = torch.randn(3, 50)
    assert torch.equal(other(x), saved(x))


def test_copies_and_dtype_moves_rebuild_the_structure():
    torch.manual_seed(4)
    layer = SparseLinear(20, 10, nnz=50)
    x = torch.randn(2, 20)
    out = layer(x)
    for copied in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        assert torch.equal(copied(x), out)
    assert torch.allclose(layer.double()(x.double()), out.double(), atol=1e-6)


def test_set_positions_keeps_the_parameter_object():
    layer = SparseLinear(10, 10, nnz=5, bias=False)
    values = layer.values
    layer.set_positions(torch.tensor([0, 11, 99]), torch.tensor([1.0, 2.0, 3.0]))
    assert layer.values is values and layer.nnz == 3
    assert torch.equal(layer(torch.eye(10))[:, 0], torch.tensor([1.0] + [0.0] * 9))


def test_structure_of_a_layer_too_large_to_exist_densely():
    positions = torch.tensor([5, 10**11 + 7, 333_000 * 333_000 - 1])
    structure = SparseStructure(positions, (333_000, 333_000))
    assert structure.nnz == 3 and structure.crow.numel() == 333_001
    layer = SparseLinear.__new__(SparseLinear)
    nn.Module.__init__(layer)
    layer.in_features = layer.out_features = 333_000
    layer.register_buffer("indices", positions)
    layer.values, layer.bias, layer._structure, layer._recorder = nn.Parameter(torch.ones(3)), None, None, None
    out = layer(torch.ones(2, 333_000))
    assert out.shape == (2, 333_000) and float(out.detach().sum()) == 6.0


@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (7, 33), (33, 7), (16, 16), (100, 17), (128, 600)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_transposing_copies_of_every_shape_equal_pytorchs(backend, monkeypatch, shape, dtype):
    monkeypatch.setattr(ops, "NATIVE_TRANSPOSE_MIN_SIZE", 0)  # the blocked kernel for small shapes too
    matrix = torch.randn(*shape, dtype=dtype)
    flipped = ops.transposed(matrix)
    assert flipped.is_contiguous() and torch.equal(flipped, matrix.t())
    assert ops.transposed(flipped.t()).data_ptr() == flipped.data_ptr()  # a transposed view costs nothing


def test_a_batch_large_enough_for_the_blocked_transpose_matches_masked_dense(backend):
    check_against_masked_dense(700, 30, 0.05, (128,), True, 3)  # 128 x 700 inputs: over NATIVE_TRANSPOSE_MIN_SIZE


@pytest.mark.parametrize("rows", [1, 2, 40])
def test_inference_without_autograd_gives_the_training_forward(backend, rows):
    torch.manual_seed(5)
    layer = SparseLinear(64, 48, nnz=300)
    x = torch.randn(rows, 64)
    with torch.no_grad():
        fast = layer(x)
    assert not fast.requires_grad
    assert torch.allclose(fast, layer(x).detach(), atol=1e-6)
    assert torch.allclose(fast, nn.functional.linear(x, layer.to_dense().weight, layer.bias).detach(), atol=1e-5)


def test_trains_under_bfloat16_autocast():
    torch.manual_seed(6)
    model = nn.Sequential(SparseLinear(20, 30, nnz=100), nn.ReLU(), nn.Linear(30, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 20), torch.randint(0, 4, (16,))
    before = model[0].values.detach().clone()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    assert model[0].values.dtype == torch.float32 and torch.isfinite(model[0].values).all()
    assert not torch.equal(model[0].values, before)


def test_sparsify_a_model_too_large_to_exist_densely_built_on_meta():
    from itop.sparse import sparsify

    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(784, 200_000), nn.ReLU(), nn.Linear(200_000, 200_000), nn.ReLU(), nn.Linear(200_000, 10))
    torch.manual_seed(0)
    sparsify(model, 0.0001, "er", seed=3, exclude=["4.weight"])  # 4e10 weights in the middle layer
    first, middle = model[0], model[2]
    assert isinstance(first, SparseLinear) and isinstance(middle, SparseLinear) and model[4].weight.is_meta
    assert not any(t.is_meta for t in (first.values, first.bias, first.indices, middle.values, middle.indices))
    assert middle.values.requires_grad and middle.bias.requires_grad
    # nn.Linear's distribution scaled for the actual fan-in (init_scale="sparse"): |w| <= 1/sqrt(in * density)
    density = middle.nnz / (200_000 * 200_000)
    assert float(middle.values.detach().abs().max()) <= 1 / (200_000 * density) ** 0.5 + 1e-6
    assert float(middle.values.detach().std()) > 0.5 / (3 * 200_000 * density) ** 0.5
    out = model[2](torch.randn(2, 200_000))
    assert out.shape == (2, 200_000)
