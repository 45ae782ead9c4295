"""SparseConv2d equals a masked nn.Conv2d: forward, input gradient and the weight gradient at the
active taps, through the direct kernels and through im2col, over random geometries."""

import pickle
import random

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from itop.sparse import SparseConv2d, conv, conv_blocked, conv_dispatch, conv_ops, conv_polyphase, dispatch, native

GEOMETRIES = [  # (in, out, kernel, stride, padding, dilation, groups, bias)
    (3, 8, 3, 1, 1, 1, 1, True),
    (4, 6, (3, 5), (2, 1), (1, 2), 1, 1, False),
    (6, 6, 3, 1, 0, 2, 3, True),
    (8, 8, 3, 2, 1, 1, 8, True),  # depthwise
    (5, 7, 4, 1, "same", 1, 1, True),  # asymmetric padding, as PyTorch's
    (5, 7, 3, 1, "same", (2, 3), 1, False),
    (4, 4, 1, 1, "valid", 1, 2, True),
    (3, 5, 5, 3, 2, 1, 1, True),
    (6, 5, 1, 1, 1, 1, 1, True),  # VGG-C's 1x1 convolutions pad by 1: a ring of outputs is the bias alone
    (4, 6, 1, 1, (2, 1), 2, 2, False),  # the same unbiased, grouped and dilated: a border of zeros
    (4, 5, (1, 3), 1, (3, 1), (1, 2), 1, False),  # padding past the kernel's reach: whole rows of padding
    (5, 4, 2, 2, (2, 0), 1, 1, True),
    (6, 4, 1, 2, 0, 1, 1, True),  # ResNet's 1x1 shortcut: one phase of four is read
]
NUMBA_WAYS = ("direct", "blocked", "polyphase")


def masked_pair(geometry, density, seed, dtype=torch.float64):
    cin, cout, kernel, stride, padding, dilation, groups, bias = geometry
    torch.manual_seed(seed)
    dense = nn.Conv2d(cin, cout, kernel, stride, padding, dilation, groups, bias=bias).to(dtype)
    mask = torch.rand(dense.weight.shape) < density
    mask.view(-1)[0] = True
    with torch.no_grad():
        dense.weight.mul_(mask)
    return dense, SparseConv2d.from_dense(dense, mask), mask


def check_against_dense(dense, sparse, mask, x, tolerance):
    """Inference (no autograd: a way may skip what only its backward needs), then the forward and
    every gradient."""
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), dense(x), rtol=tolerance, atol=tolerance)
    x_dense, x_sparse = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_dense, out_sparse = dense(x_dense), sparse(x_sparse)
    torch.testing.assert_close(out_sparse, out_dense, rtol=tolerance, atol=tolerance)
    weights = torch.randn_like(out_dense)
    (out_dense * weights).sum().backward()
    (out_sparse * weights).sum().backward()
    torch.testing.assert_close(x_sparse.grad, x_dense.grad, rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(sparse.values.grad, dense.weight.grad.reshape(-1)[sparse.indices], rtol=tolerance, atol=tolerance)
    if dense.bias is not None:
        torch.testing.assert_close(sparse.bias.grad, dense.bias.grad, rtol=tolerance, atol=tolerance)


@pytest.mark.filterwarnings("ignore:Using padding='same'")  # PyTorch's, for the dense reference
def skip_unserved(path: str, geometry) -> None:
    if path in NUMBA_WAYS and conv_ops.conv_kernels() is None:
        pytest.skip("numba is not installed")
    if path == "blocked" and geometry[3] != 1:
        pytest.skip("the blocked way serves stride 1 only")
    if path == "polyphase" and (geometry[3] == 1 or geometry[5] != 1 or geometry[6] != 1):
        pytest.skip("the polyphase way serves strided layers without groups or dilation")


@pytest.mark.parametrize("path", ["direct", "blocked", "polyphase", "im2col", "dense"])
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_matches_the_masked_dense_convolution_in_float64(monkeypatch, path, geometry):
    skip_unserved(path, geometry)
    monkeypatch.setattr(conv, "choose", lambda layer, x, train: path)
    rng = random.Random(hash(geometry) % 1000)
    for trial in range(3):
        dense, sparse, mask = masked_pair(geometry, rng.choice([0.05, 0.3, 1.0]), seed=trial)
        batches = [1, 2, 5] if path not in ("blocked", "polyphase") else [1, 5, 16, 21, 35]  # whole and partial blocks of 16 images
        batch, height, width = rng.choice(batches), rng.randint(7, 13), rng.randint(6, 12)
        x = torch.randn(batch, geometry[0], height, width, dtype=torch.float64)
        check_against_dense(dense, sparse, mask, x, 1e-10)


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("path", ["blocked", "polyphase"])
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_small_planes_compute_only_the_terms_inside_the_input(monkeypatch, path, geometry):
    """On planes from 1x1 to 4x4 most terms read padding, which the blocked ways skip: the results
    still equal the dense convolution's, wherever an output has few taps inside or none."""
    skip_unserved(path, geometry)
    monkeypatch.setattr(conv, "choose", lambda layer, x, train: path)
    for trial, (height, width) in enumerate([(1, 1), (3, 3), (2, 4), (4, 3)]):
        dense, sparse, mask = masked_pair(geometry, 0.3, seed=trial)
        if sparse.geometry.output_size(height, width)[0] < 1 or sparse.geometry.output_size(height, width)[1] < 1:
            continue
        x = torch.randn(17, geometry[0], height, width, dtype=torch.float64)
        check_against_dense(dense, sparse, mask, x, 1e-10)


def test_float32_and_threads_give_the_same_numbers(monkeypatch):
    monkeypatch.setattr(conv, "choose", lambda layer, x, train: "direct")
    dense, sparse, mask = masked_pair((16, 32, 3, 1, 1, 1, 1, True), 0.1, 0, torch.float32)
    x = torch.randn(16, 16, 20, 20)
    check_against_dense(dense, sparse, mask, x, 1e-4)
    results = []
    for work in (0, 1 << 62):  # every product over the threads, then every one on the calling thread
        monkeypatch.setattr(native, "PARALLEL_MIN_WORK", work)
        x_grad = x.clone().requires_grad_()
        sparse.values.grad = None
        out = sparse(x_grad)
        out.square().sum().backward()
        results.append((out, x_grad.grad, sparse.values.grad))
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_the_blocked_way_gives_the_same_numbers_on_any_thread_count(monkeypatch):
    if conv_ops.conv_kernels() is None:
        pytest.skip("numba is not installed")
    monkeypatch.setattr(conv, "choose", lambda layer, x, train: "blocked")
    dense, sparse, mask = masked_pair((12, 20, 3, 1, 1, 1, 1, True), 0.1, 0, torch.float32)
    x = torch.randn(37, 12, 5, 5)  # two whole blocks of 16 images and a partial one
    check_against_dense(dense, sparse, mask, x, 1e-4)
    results, threads = [], torch.get_num_threads()
    try:
        for count in (1, threads):
            torch.set_num_threads(count)
            x_grad = x.clone().requires_grad_()
            sparse.values.grad = None
            out = sparse(x_grad)
            out.square().sum().backward()
            results.append((out, x_grad.grad, sparse.values.grad))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.parametrize("density", [1.0, 0.6])
def test_the_blocked_backward_runs_four_taps_a_pass_and_the_rest_one_by_one(monkeypatch, density):
    """The blocked backward takes the taps of one output channel and kernel position four at a
    time, then one by one: 9 input channels at density 1 give two passes and one left over per
    position, 0.6 leaves every count from 0 to 9."""
    monkeypatch.setattr(conv, "choose", lambda layer, x, train: "blocked")
    dense, sparse, mask = masked_pair((9, 5, 3, 1, 1, 1, 1, True), density, 0)
    x = torch.randn(35, 9, 4, 5, dtype=torch.float64)  # two whole blocks of 16 images and a partial one
    check_against_dense(dense, sparse, mask, x, 1e-10)


def test_blocks_are_as_wide_as_the_batch_fills_and_the_cache_holds():
    assert conv_blocked.lanes(128, 512, 25, 4) == 64  # VGG-C's 3x3 planes: two blocks of 64
    assert conv_blocked.lanes(128, 512, 49, 4) == 32  # its 5x5 planes: 64 images would be 6.4 MB a block
    assert conv_blocked.lanes(64, 8, 25, 4) == 32  # at least two blocks
    assert conv_blocked.lanes(120, 8, 25, 4) == 64  # 8 lanes of 128 empty
    assert conv_blocked.lanes(100, 8, 25, 4) == 16  # 64 or 32 a block would leave 28 empty
    assert conv_blocked.lanes(32, 8, 25, 4) == conv_blocked.lanes(17, 8, 25, 4) == 16
    assert conv_blocked.lanes(128, 512, 25, 8) == 32  # float64 doubles the bytes
    assert conv_blocked.lanes(128, 512, 49, 4, train=False) == 64  # no backward: no cache bound


@pytest.mark.parametrize("path", ["blocked", "polyphase"])
@pytest.mark.parametrize("images", [64, 120, 128])
def test_wide_blocks_match_the_masked_dense_convolution(monkeypatch, path, images):
    """Batches that take blocks of 32 and 64 images, one of them partly empty."""
    monkeypatch.setattr(conv, "choose", lambda layer, x, train: path)
    stride = 1 if path == "blocked" else 2
    dense, sparse, mask = masked_pair((5, 6, 3, stride, 1, 1, 1, True), 0.5, 0)
    x = torch.randn(images, 5, 6, 7, dtype=torch.float64)
    check_against_dense(dense, sparse, mask, x, 1e-10)


@pytest.mark.parametrize("path", ["blocked", "polyphase"])
def test_inference_takes_wider_blocks_than_training_where_the_cache_bound_bites(monkeypatch, path):
    """Without a backward the blocks ignore BLOCK_BYTES: here inference runs blocks of 64 images,
    training blocks of 16, and both equal the dense convolution."""
    monkeypatch.setattr(conv, "choose", lambda layer, x, train: path)
    monkeypatch.setattr(conv_blocked, "BLOCK_BYTES", 1)
    widths = []
    original = conv_blocked.lanes
    monkeypatch.setattr(conv_blocked, "lanes", lambda *args: widths.append(original(*args)) or widths[-1])
    stride = 1 if path == "blocked" else 2
    dense, sparse, mask = masked_pair((5, 6, 3, stride, 1, 1, 1, True), 0.5, 0)
    check_against_dense(dense, sparse, mask, torch.randn(128, 5, 6, 7, dtype=torch.float64), 1e-10)
    assert widths[0] == 64 and set(widths[1:]) == {16}


def test_inference_without_autograd_and_conversions_round_trip():
    dense, sparse, mask = masked_pair((4, 6, 3, 2, 1, 1, 2, True), 0.2, 0, torch.float32)
    x = torch.randn(3, 4, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), dense(x))
    back = sparse.to_dense()
    assert torch.equal(back.weight, dense.weight) and torch.equal(back.bias, dense.bias)
    assert (back.stride, back.padding, back.groups) == (dense.stride, dense.padding, dense.groups)
    assert sparse.nnz == int(mask.sum()) and torch.equal(sparse.weight_indices(), mask.reshape(-1).nonzero().squeeze(1))
    copied = pickle.loads(pickle.dumps(sparse))
    torch.testing.assert_close(copied(x), sparse(x))


def test_state_dict_loads_with_weights_only_and_another_count(tmp_path):
    a = SparseConv2d(4, 8, 3, padding=1, nnz=40, generator=torch.Generator().manual_seed(0))
    b = SparseConv2d(4, 8, 3, padding=1, nnz=10, generator=torch.Generator().manual_seed(1))
    torch.save(a.state_dict(), tmp_path / "conv.pt")
    b.load_state_dict(torch.load(tmp_path / "conv.pt", weights_only=True))
    x = torch.randn(2, 4, 6, 6)
    assert b.nnz == 40 and torch.equal(b(x), a(x))


def test_initialisation_uses_the_actual_fan_in():
    layer = SparseConv2d(64, 128, 3, nnz=128 * 20, generator=torch.Generator().manual_seed(0))
    assert layer.values.abs().max() <= 1 / 20**0.5 and layer.values.abs().max() > 0.9 / 20**0.5
    assert layer.density == pytest.approx(128 * 20 / (128 * 64 * 9))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"padding_mode": "reflect"}, "padding_mode='reflect' is not supported"),
        ({"groups": 3}, "groups=3 must divide"),
        ({"stride": 2, "padding": "same"}, "padding='same' needs stride 1"),
        ({"nnz": 0}, "nnz must be an integer"),
        ({"kernel_size": (3, 3, 3)}, "kernel_size must be an int or a pair"),
    ],
)
def test_unsupported_options_are_refused_in_one_line(kwargs, message):
    arguments = {"in_channels": 4, "out_channels": 8, "kernel_size": 3, "nnz": 10, **kwargs}
    with pytest.raises(ValueError, match=message) as error:
        SparseConv2d(**arguments)
    assert "\n" not in str(error.value)


def test_batch_norm_residual_and_inplace_relu_after_a_sparse_convolution():
    torch.manual_seed(0)
    first, second = SparseConv2d(8, 8, 3, padding=1, nnz=60), SparseConv2d(8, 8, 3, padding=1, nnz=60)
    norm = nn.BatchNorm2d(8)
    x = torch.randn(4, 8, 10, 10, requires_grad=True)
    hidden = F.relu(first(x), inplace=True)  # on the convolution's own output
    out = second(F.relu(norm(hidden), inplace=True))
    out += x  # a residual connection, in place on the convolution's output
    F.relu(out, inplace=True).sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(first.values.grad).all() and torch.isfinite(second.values.grad).all()


def test_the_way_is_measured_once_per_shape_class_and_forced_by_itop_kernels(monkeypatch, tmp_path):
    chooser = dispatch.Dispatcher(mode="auto", path=tmp_path / "kernels.json")
    monkeypatch.setattr(dispatch, "active", chooser)
    layer = SparseConv2d(8, 16, 3, padding=1, nnz=100, generator=torch.Generator().manual_seed(0))
    x = torch.randn(4, 8, 10, 10)
    out = layer(x)
    key = conv_dispatch.decision_key(layer.geometry, layer.nnz, x, train=True)
    candidates = conv_dispatch.candidates(layer.geometry, torch.float32, 10, 10)
    assert chooser.decisions[key] in candidates
    assert set(chooser.timings[key]) == set(candidates) >= {"dense"}
    probes = chooser.probes
    torch.testing.assert_close(layer(x), out)
    assert chooser.probes == probes  # the class is decided
    assert dispatch.decode(dispatch.encode(key)) == key  # and survives the cache file
    for mode, way in (("torch", "im2col"), ("dense", "dense")):
        monkeypatch.setattr(dispatch, "active", dispatch.Dispatcher(mode=mode))
        assert conv_dispatch.choose(layer, x, True) == way


def test_where_nothing_is_measured_the_cost_model_decides(monkeypatch):
    monkeypatch.setattr(dispatch, "active", dispatch.Dispatcher(mode="auto", budget=0))
    plain = SparseConv2d(8, 8, 3, padding=1, nnz=20)  # density 0.035
    strided = SparseConv2d(8, 8, 3, stride=2, padding=1, nnz=20)
    denser, pointwise = SparseConv2d(8, 8, 3, padding=1, nnz=200), SparseConv2d(8, 8, 1, nnz=20)
    x = torch.randn(2, 8, 32, 32)
    assert conv_dispatch.choose(denser, x, True) == conv_dispatch.choose(pointwise, x, True) == "dense"
    # a strided 3x3 layer at density 0.035: its phases, by the NCHW kernels on this 16x16 output plane
    assert conv_dispatch.choose(strided, x, True) == ("polyphase" if conv_ops.conv_kernels() is not None else "dense")
    assert conv_dispatch.choose(plain, x, True) == ("direct" if conv_ops.conv_kernels() is not None else "dense")
    small = torch.randn(16, 8, 6, 6)  # output planes of at most 8x8 at a batch of 16: the blocked form
    assert conv_dispatch.choose(plain, small, True) == ("blocked" if conv_ops.conv_kernels() is not None else "dense")
    assert conv_dispatch.choose(plain, small[:8], True) == ("direct" if conv_ops.conv_kernels() is not None else "dense")
    wide = torch.randn(16, 8, 12, 12)  # a strided 3x3 layer at density 0.035 onto a 6x6 plane: its phases, blocked
    assert conv_dispatch.choose(strided, wide, True) == ("polyphase" if conv_ops.conv_kernels() is not None else "dense")
    with FlopCounterMode(display=False):  # counted as the dense layer by a hook, never computed densely
        assert conv_dispatch.choose(strided, x, False) == ("direct" if conv_ops.conv_kernels() is not None else "im2col")


def test_the_direct_cost_model_follows_plane_size_and_density():
    geometry = conv_ops.geometry_of(512, 512, 3, 1, 1, 1, 1)
    assert (
        conv_dispatch.direct_cost(geometry, 0.02, 32, 32)
        < conv_dispatch.direct_cost(geometry, 0.02, 4, 4)
        < conv_dispatch.direct_cost(geometry, 0.2, 4, 4)
    )
    assert (
        conv_dispatch.direct_cost(geometry, 0.176, 32, 32)
        < conv_dispatch.DIRECT_MAX_COST
        < conv_dispatch.direct_cost(geometry, 0.3, 32, 32)
    )


@pytest.mark.parametrize("geometry", [g for g in GEOMETRIES if g[3] != 1 and g[5] == 1 and g[6] == 1])
def test_the_polyphase_way_on_large_planes_takes_the_nchw_kernels(monkeypatch, geometry):
    """Output planes over 8x8: the phases' stride-1 convolution runs on the NCHW kernels."""
    skip_unserved("polyphase", geometry)
    monkeypatch.setattr(conv, "choose", lambda layer, x, train: "polyphase")
    dense, sparse, mask = masked_pair(geometry, 0.3, seed=0)
    x = torch.randn(3, geometry[0], 29, 26, dtype=torch.float64)
    assert not conv_polyphase.blocked(conv_polyphase.phases(sparse.geometry, sparse.structure, 29, 26), 16)
    check_against_dense(dense, sparse, mask, x, 1e-10)


def test_probes_time_only_the_ways_that_may_win_on_enough_images():
    """The blocked ways are candidates on output planes up to 8x8 only, im2col (where numba serves)
    for strided layers only, the direct kernels' strided form only where the polyphase way cannot
    serve; a probe convolves up to 32 images, fewer for large inputs."""
    numba = conv_ops.conv_kernels() is not None
    small = large = SparseConv2d(8, 8, 3, padding=1, nnz=60).geometry  # one geometry, on a small and a large plane
    strided = SparseConv2d(8, 8, 3, stride=2, padding=1, nnz=60).geometry
    strided_groups = SparseConv2d(8, 8, 3, stride=2, padding=1, groups=2, nnz=30).geometry
    if numba:
        assert conv_dispatch.candidates(small, torch.float32, 3, 3) == ["direct", "blocked", "dense"]
        assert conv_dispatch.candidates(large, torch.float32, 32, 32) == ["direct", "dense"]
        assert conv_dispatch.candidates(strided, torch.float32, 8, 8) == ["polyphase", "im2col", "dense"]
        assert conv_dispatch.candidates(strided_groups, torch.float32, 8, 8) == ["direct", "im2col", "dense"]
    else:
        assert conv_dispatch.candidates(small, torch.float32, 3, 3) == ["im2col", "dense"]
    assert conv_dispatch.probe_images(torch.empty(128, 512, 3, 3)) == 32
    assert conv_dispatch.probe_images(torch.empty(8, 512, 3, 3)) == 8
    assert conv_dispatch.probe_images(torch.empty(128, 64, 112, 112)) == 4  # 800k values an image
