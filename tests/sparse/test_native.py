"""The numba kernels give the same numbers on the calling thread alone as over the thread pool."""

import pytest
import torch

from itop.sparse import SparseLinear, native

pytestmark = pytest.mark.skipif(not native.AVAILABLE, reason="numba is not installed")


@pytest.mark.parametrize("batch", [2, 8, 33])
def test_serial_and_parallel_products_agree_bit_for_bit(monkeypatch, batch):
    torch.manual_seed(0)
    layer = SparseLinear(300, 70, nnz=2_000)
    structure, values = layer.structure, layer.values.detach()
    rows_t, grads_t = torch.randn(300, batch), torch.randn(70, batch)
    results = {}
    for name, minimum in (("serial", 1 << 60), ("parallel", 0)):
        monkeypatch.setattr(native, "PARALLEL_MIN_WORK", minimum)
        native.kernels()
        results[name] = (
            native.forward(structure.crow, structure.col, values, rows_t, layer.bias),
            native.weight_grad(structure.crow, structure.col, grads_t, rows_t),
            native.input_grad(structure.crow, structure.col, values, grads_t, 300),
            native.transpose(rows_t),
        )
    for serial, parallel in zip(results["serial"], results["parallel"]):
        assert torch.equal(serial, parallel)
    dense = layer.to_dense().weight.detach()
    forward, weight_grad, input_grad, transpose = results["serial"]
    torch.testing.assert_close(forward, dense @ rows_t + layer.bias.detach()[:, None])
    torch.testing.assert_close(weight_grad, (grads_t @ rows_t.t()).reshape(-1)[layer.indices])
    torch.testing.assert_close(input_grad, dense.t() @ grads_t)
    assert torch.equal(transpose, rows_t.t())


@pytest.mark.skipif(not native.AVAILABLE, reason="numba not installed")
def test_prepare_loads_the_kernels_before_any_layer_computes():
    native.prepare(torch.float32)
    native.prepare(torch.float64)
    assert native.kernels() is not None
    native.prepare(torch.float16)  # no kernel serves it: nothing to load, no error


@pytest.mark.parametrize("shape", [(128, 3072), (2, 1000), (17, 300), (3, 70), (300, 2000), (512, 784), (33, 16), (1, 5)])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("way", ["bands", "blocks", None])
def test_the_transpose_is_exact_in_row_bands_and_column_blocks(monkeypatch, shape, threads, way):
    """Either sweep, or the fixed rule's (None: bands for a wide matrix, blocks otherwise), partial
    tiles included, serially or over the pool."""
    native.kernels()
    monkeypatch.setattr(native, "threads_for", lambda work: min(threads, native.configured_threads()))
    matrix = torch.randn(*shape)
    assert torch.equal(native.transpose(matrix, way), matrix.t())


@pytest.mark.parametrize("threads", [1, 2])
def test_the_fused_backward_gives_the_two_products_numbers_exactly(monkeypatch, threads):
    """At a batch of 2 the weight and input gradients come from one pass over the CSR, bit for bit
    the numbers of the two separate kernels (same expressions, same parts)."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    torch.manual_seed(1)
    layer = SparseLinear(300, 70, nnz=2_000)
    structure, values = layer.structure, layer.values.detach()
    grads_t, rows_t = torch.randn(70, 2), torch.randn(300, 2)
    grad_values, grad_input_t = native.backward(*structure.arrays(), values, grads_t, rows_t, 300, threads)
    assert torch.equal(grad_values, native.weight_grad(structure.crow, structure.col, grads_t, rows_t, threads))
    assert torch.equal(grad_input_t, native.input_grad(structure.crow, structure.col, values, grads_t, 300, threads))
    dense = torch.zeros(70 * 300).index_copy_(0, structure.positions, values).view(70, 300)
    torch.testing.assert_close(grad_input_t, dense.t() @ grads_t, rtol=1e-5, atol=1e-5)


def test_a_batch_of_two_trains_through_the_fused_backward(monkeypatch):
    from itop.sparse import ops

    calls = []
    original = native.backward
    monkeypatch.setattr(native, "backward", lambda *args: calls.append(1) or original(*args))
    monkeypatch.setattr(ops, "choose", lambda op, *args: "numba1")
    torch.manual_seed(2)
    layer = SparseLinear(50, 40, nnz=300)
    x = torch.randn(2, 50, requires_grad=True)
    layer(x).square().sum().backward()
    assert calls == [1]
    dense = torch.zeros(40 * 50).index_copy_(0, layer.structure.positions, layer.values.detach()).view(40, 50).requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    torch.nn.functional.linear(x2, dense, layer.bias.detach()).square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.values.grad, dense.grad.view(-1)[layer.structure.positions], rtol=1e-5, atol=1e-5)


def test_torch_set_num_threads_bounds_every_kernel(monkeypatch):
    """With torch.set_num_threads(1) no numba kernel wakes a pool: every product runs on the
    calling thread, the parallel forms included."""
    from itop.sparse import dispatch

    monkeypatch.setattr(dispatch, "active", dispatch.Dispatcher(mode="numba"))
    monkeypatch.setattr(native, "_pool", lambda threads: pytest.fail(f"a pool of {threads} threads was woken"))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert native.configured_threads() == 1
        torch.manual_seed(3)
        layer = SparseLinear(3000, 2000, nnz=300_000)  # large enough for the parallel forms
        for batch in (2, 64):
            x = torch.randn(batch, 3000, requires_grad=True)
            layer(x).sum().backward()
        native.transpose(torch.randn(512, 3000))
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("threads", [1, 2])
def test_gather_and_scatter_read_and_write_the_active_positions_exactly(threads):
    generator = torch.Generator().manual_seed(0)
    mask = torch.rand(70, 45, generator=generator) < 0.1
    mask[3] = False  # an empty row
    crow, col = (t.to(torch.int32) for t in (mask.to_sparse_csr().crow_indices(), mask.to_sparse_csr().col_indices()))
    dense = torch.randn(70, 45, generator=generator)
    assert torch.equal(native.gather(crow, col, dense, threads), dense[mask])
    values = torch.randn(int(mask.sum()), generator=generator)
    expected = torch.zeros(70, 45).masked_scatter_(mask, values)
    assert torch.equal(native.scatter(crow, col, values, (70, 45), threads), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1024, 128), (7, 2), (3, 1), (5, 33)])
def test_row_sums_give_the_bias_gradient(dtype, shape):
    """The bias gradient's sum over the batch (`native.row_sums`), in the matrix's dtype."""
    native.kernels()
    matrix = torch.randn(*shape, dtype=torch.float64).to(dtype)
    sums = native.row_sums(matrix)
    assert sums.dtype == dtype
    torch.testing.assert_close(sums, matrix.sum(1))


def test_the_bias_gradient_follows_the_forced_kernels(monkeypatch, tmp_path):
    """ITOP_KERNELS=torch or dense keeps numba out of the backward, the bias gradient's sum included."""
    from itop.sparse import dispatch

    calls = []
    monkeypatch.setattr(native, "row_sums", lambda matrix: calls.append(1) or matrix.sum(1))
    layer = SparseLinear(30, 20, nnz=100)
    for mode, expected in (("auto", 1), ("dense", 0), ("torch", 0)):
        calls.clear()
        monkeypatch.setattr(dispatch, "active", dispatch.Dispatcher(mode=mode, path=tmp_path / "decisions.json"))
        layer(torch.randn(4, 30)).sum().backward()
        assert len(calls) == expected, mode


@pytest.mark.parametrize("threads", [1, 2])
def test_channel_sums_give_a_convolutions_bias_gradient_on_any_thread_count(monkeypatch, threads):
    native.kernels()
    monkeypatch.setattr(native, "threads_for", lambda work: threads)
    grad = torch.randn(5, 7, 3, 4, dtype=torch.float64)
    torch.testing.assert_close(native.channel_sums(grad), grad.sum((0, 2, 3)))
    sums = native.channel_sums(grad.float())
    monkeypatch.setattr(native, "threads_for", lambda work: 1)
    assert torch.equal(native.channel_sums(grad.float()), sums)  # each channel summed by one part, in order


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rows_without_gradient_give_zero_weight_gradients_and_scatter_nothing(dtype):
    """At a batch of 2, a unit whose ReLU was off for both examples has an all-zero output-gradient
    row: the kernels skip its weights' products but still write their zero gradients (the output
    arrays start as NaN here, so a skipped write shows)."""
    from itop.sparse import native_kernels

    torch.manual_seed(3)
    layer = SparseLinear(300, 70, nnz=2_000).to(dtype)
    crow, col = layer.structure.arrays()  # numpy arrays
    values = layer.values.detach()
    grads_t, rows_t = torch.randn(70, 2, dtype=dtype), torch.randn(300, 2, dtype=dtype)
    grads_t[::3] = 0.0  # every third unit silent
    dense = torch.zeros(70 * 300, dtype=dtype).index_copy_(0, layer.structure.positions, values).view(70, 300)
    expected_values = (grads_t @ rows_t.t()).reshape(-1)[layer.structure.positions]
    grad_values, part = torch.full_like(values, float("nan")), torch.full((300, 2), float("nan"), dtype=dtype)
    native_kernels.backward_rows(crow, col, values.numpy(), grads_t.numpy(), rows_t.numpy(), grad_values.numpy(), part.numpy(), 0, 70)
    torch.testing.assert_close(grad_values, expected_values)
    torch.testing.assert_close(part, dense.t() @ grads_t)
    only_weights = torch.full_like(values, float("nan"))
    native_kernels.weight_grad_rows(crow, col, grads_t.numpy(), rows_t.numpy(), only_weights.numpy(), 0, 70)
    assert torch.equal(only_weights, grad_values)
