"""How each `SparseConv2d` call computes: the choice between the three ways of `conv_ops.py`.

Which way serves a call (the direct numba kernels, im2col or the dense convolution) is measured on
the machine at hand once per shape class (`itop.sparse.dispatch`, as for the Linear products;
`ITOP_KERNELS` forces one): the candidates here, the probes that time them on random taps, and the
fixed rule with its cost model where nothing is measured. Kept apart from `conv_ops.py`, which
computes whichever way is chosen, so that the computations do not depend on how they are picked.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from . import dispatch, ops
from .conv_ops import ConvGeometry, SparseConv2dFunction, compute, direct_usable

PROBE_IMAGES = 4  # a probe convolves at most this many images: every way's time grows with the batch alike
DIRECT_FIXED_VECTORS = 4  # `direct_cost`'s fixed cost per tap and pass, in vectors of 16 values
DENSE_EFFICIENCY = 3.6  # `direct_cost`: dense multiply-adds per second over the direct kernels'
DIRECT_MAX_COST = 0.8  # the fixed rule takes the direct kernels below this estimated cost (see `fixed_rule`)


def _dense_allowed(geometry: ConvGeometry) -> bool:
    return math.prod(geometry.weight_shape) <= dispatch.DENSE_MAX_ELEMENTS


def candidates(geometry: ConvGeometry, dtype: torch.dtype) -> list[str]:
    """The ways to compute a layer of this geometry here."""
    names = (["direct"] if direct_usable(torch.empty(0, dtype=dtype)) else []) + ["im2col"]
    return names + (["dense"] if _dense_allowed(geometry) else [])


def direct_cost(geometry: ConvGeometry, density: float, height: int, width: int) -> float:
    """The direct kernels' time over the dense convolution's, estimated: per active tap one pass of
    ceil(span / 16) vectors over the wide plane plus about 4 vectors' worth of fixed cost, against
    dense arithmetic about 3.6 times as efficient per multiply-add. Fitted on an AVX-512 Xeon at
    batch 128 (VGG-C's layers at ERK 0.05: 3x3 kernels on planes of 32x32 down to 3x3 gained
    1.3-2.7x, within 25% of this model)."""
    out_h, out_w = geometry.output_size(height, width)
    span = out_h * (width + geometry.padding[2] + geometry.padding[3])
    return density * (-(-span // 16) + DIRECT_FIXED_VECTORS) * 16 * DENSE_EFFICIENCY / (out_h * out_w)


def fixed_rule(geometry: ConvGeometry, density: float, x: Tensor) -> str:
    """The choice where nothing is measured (the probe budget spent): the direct kernels at stride
    1 where numba serves and `direct_cost` is under `DIRECT_MAX_COST`; else the dense convolution
    where the dense weight may exist, else im2col. (The direct kernels' strided form loops over
    short rows: a ResNet-18 at ERK 0.05 whose strided layers took it ran at 0.63x dense.)"""
    if geometry.stride == (1, 1) and direct_usable(x) and direct_cost(geometry, density, *x.shape[2:]) < DIRECT_MAX_COST:
        return "direct"
    return "dense" if _dense_allowed(geometry) else "im2col"


def decision_key(geometry: ConvGeometry, nnz: int, x: Tensor, train: bool) -> tuple:
    """The shape class of a convolution call (see `dispatch`)."""
    images, _, height, width = x.shape
    return (
        "conv_train" if train else "conv",
        geometry.out_channels,
        geometry.in_channels,
        *geometry.kernel,
        *geometry.stride,
        *geometry.padding,
        *geometry.dilation,
        geometry.groups,
        height,
        width,
        nnz.bit_length(),
        dispatch.size_class(images),
        x.dtype,
        torch.get_num_threads(),
    )


def choose(layer, x: Tensor, train: bool) -> str:
    """How this call computes: measured once per shape class (ITOP_KERNELS=auto on the CPU), forced
    by ITOP_KERNELS (numba: direct, torch: im2col, dense: dense where allowed), or the fixed rule.
    Under a dispatch mode such as `FlopCounterMode` nothing is probed and nothing computed densely
    (it would count as the layer's work)."""
    geometry = layer.geometry
    chooser = dispatch.active or dispatch.current()
    mode = chooser.mode
    if mode == "numba" or torch._C._len_torch_dispatch_stack():
        return "direct" if direct_usable(x) else "im2col"
    if mode in ("torch", "dense"):
        return "dense" if mode == "dense" and _dense_allowed(geometry) else "im2col"
    if not x.is_cpu:
        return fixed_rule(geometry, layer.density, x)
    key = decision_key(geometry, layer.nnz, x, train)
    how = chooser.decisions.get(key)
    if how is None:
        shape, nnz, dtype = (min(x.shape[0], PROBE_IMAGES), *x.shape[1:]), layer.nnz, x.dtype
        how = chooser.decide(key, lambda: conv_timings(layer, shape, nnz, dtype, train), lambda: fixed_rule(geometry, layer.density, x))
    return how


def conv_timings(layer, shape: tuple, nnz: int, dtype: torch.dtype, train: bool) -> dict[str, float]:
    """Seconds per call of each way for a layer of `layer`'s geometry with `nnz` random active taps,
    on random inputs of `shape`: forward, and with `train` the backward too."""
    generator = torch.Generator().manual_seed(0)  # never the global one: probing must not change a run's draws
    geometry = layer.geometry
    positions = ops.random_structure((geometry.out_channels, geometry.taps), nnz, generator).positions
    probe = type(layer).__new__(type(layer))  # a SparseConv2d of the class's geometry, random taps
    nn.Module.__init__(probe)
    probe._set_geometry(geometry, layer.padding, "zeros")
    probe.register_buffer("indices", positions)
    probe.values = nn.Parameter(torch.randn(positions.numel(), generator=generator).to(dtype))
    probe.bias = None if layer.bias is None else nn.Parameter(torch.randn(geometry.out_channels, generator=generator).to(dtype))
    x = torch.randn(shape, generator=generator).to(dtype).requires_grad_(train)
    out_shape = (shape[0], geometry.out_channels, *geometry.output_size(*shape[2:]))
    grad_out = torch.randn(out_shape, generator=generator).to(dtype)
    leaves = [t for t in (x, probe.values, probe.bias) if t is not None]

    def run(how: str):
        if not train:
            with torch.no_grad():
                return lambda: compute(how, probe, x, probe.values, probe.bias)[0]
        return lambda: torch.autograd.grad(SparseConv2dFunction.apply(x, probe.values, probe.bias, probe, how), leaves, grad_out)

    with torch.enable_grad() if train else torch.no_grad():
        return dispatch.time_candidates({how: run(how) for how in candidates(geometry, dtype)})
