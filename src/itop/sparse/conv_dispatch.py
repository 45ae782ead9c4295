"""How each `SparseConv2d` call computes: the choice between the five ways of `conv_ops.py`.

Which way serves a call (the direct numba kernels, their blocked form, the polyphase form of a
strided layer, im2col or the dense convolution) is measured on
the machine at hand once per shape class (`itop.sparse.dispatch`, as for the Linear products;
`ITOP_KERNELS` forces one): the candidates here, the probes that time them on random taps, and the
fixed rule with its cost model where nothing is measured. Kept apart from `conv_ops.py`, which
computes whichever way is chosen, so that the computations do not depend on how they are picked.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from . import conv_blocked, conv_polyphase, dispatch, ops
from .conv_ops import ConvGeometry, SparseConv2dFunction, compute, direct_usable

# A probe convolves at most PROBE_IMAGES images, fewer where an input would pass PROBE_ELEMENTS values
# (never fewer than MIN_PROBE_IMAGES). Probes on 4 images misjudged batch-128 layers: every way has a
# fixed cost per call, in a different share of each way's time, and the blocked way runs one block of
# images per thread. On 32 images the fastest way was the fastest at batch 128 for each of VGG-C's
# layers at ERK 0.05, for training and inference, or within 10% of it (AVX-512 Xeon). The blocked
# ways see up to two of their widest blocks (128 images), since the batch sets their block width.
PROBE_IMAGES, MIN_PROBE_IMAGES, PROBE_ELEMENTS = 32, 4, 1 << 21
BLOCKED_WAYS = ("blocked", "polyphase")  # probed on as many images as make the batch's blocks, their time scaled
DIRECT_FIXED_VECTORS = 4  # `direct_cost`'s fixed cost per tap and pass, in vectors of 16 values
DENSE_EFFICIENCY = 3.6  # `direct_cost`: dense multiply-adds per second over the direct kernels'
DIRECT_MAX_COST = 0.8  # the fixed rule takes the direct kernels below this estimated cost (see `fixed_rule`)
POLYPHASE_MAX_DENSITY = 0.1  # the fixed rule's polyphase way for strided layers (see `fixed_rule`)


def _dense_allowed(geometry: ConvGeometry) -> bool:
    return math.prod(geometry.weight_shape) <= dispatch.DENSE_MAX_ELEMENTS


def candidates(geometry: ConvGeometry, dtype: torch.dtype, height: int, width: int) -> list[str]:
    """The ways that may compute a layer of this geometry and input size fastest here: where numba
    serves, its kernels (the blocked way on output planes up to 8x8 only; for strided layers the
    polyphase way instead of the direct kernels' strided form, which ran 7-32x slower than it on each
    of ResNet-18's strided layers, AMD EPYC AVX-512, and would spend the probe budget) and im2col for
    strided layers (it lost to the other ways on every stride-1 layer of VGG-C measured); else
    im2col. The dense convolution where the dense weight may exist."""
    native = direct_usable(torch.empty(0, dtype=dtype))
    pixels = math.prod(geometry.output_size(height, width))
    polyphase = native and conv_polyphase.usable(geometry)
    names = ["direct"] if native and not polyphase else []
    names += ["blocked"] if native and conv_blocked.usable(geometry) and pixels <= conv_blocked.MAX_PIXELS else []
    names += ["polyphase"] if polyphase else []
    names += ["im2col"] if not native or geometry.stride != (1, 1) else []
    return names + (["dense"] if _dense_allowed(geometry) else [])


def probe_images(x: Tensor) -> int:
    """How many images a probe convolves for a call on `x` (see PROBE_IMAGES)."""
    per_image = max(1, math.prod(x.shape[1:]))
    return min(x.shape[0], PROBE_IMAGES, max(MIN_PROBE_IMAGES, PROBE_ELEMENTS // per_image))


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
    1 where numba serves and `direct_cost` is under `DIRECT_MAX_COST`, in their blocked form on
    output planes where they pay (`conv_blocked.pays`: up to 8x8, batches of 16 or more); else the dense
    convolution where the dense weight may exist, else im2col. (The direct kernels' strided form
    loops over short rows: a ResNet-18 at ERK 0.05 whose strided layers took it ran at 0.63x dense.
    VGG-C's 3x3 layers at batch 128 ran blocked 1.3-1.8x faster forward and 1.2-2.2x backward than
    the NCHW kernels on planes of 8x8 down to 3x3; the forward was slower on 16x16 and 32x32.)
    A strided layer takes the polyphase way at density up to `POLYPHASE_MAX_DENSITY`, or with a 1x1
    kernel (one phase: the input subsampled). At ERK 0.02, batch 128, forward and backward:
    ResNet-18's 16x16 -> 8x8 and 8x8 -> 4x4 layers ran 1.7x and 3.2x dense's speed, its
    32x32 -> 16x16 layer (density 0.067) 1.35x, WRN-16-8's (density 0.035) 1.8x; that 32x32 layer
    at density 0.15, 1.1x; ResNet-18's 1x1 shortcuts (density 0.59, 0.29, 0.15) 1.6x, 1.6x, 1.0x.)"""
    small = conv_blocked.pays(math.prod(geometry.output_size(*x.shape[2:])), x.shape[0])
    if geometry.stride == (1, 1) and direct_usable(x) and direct_cost(geometry, density, *x.shape[2:]) < DIRECT_MAX_COST:
        return "blocked" if small else "direct"
    pointwise = geometry.kernel == (1, 1)
    if conv_polyphase.usable(geometry) and direct_usable(x) and (density <= POLYPHASE_MAX_DENSITY or pointwise):
        return "polyphase"
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
        shape, nnz, dtype = (probe_images(x), *x.shape[1:]), layer.nnz, x.dtype
        wide_images = max(shape[0], min(x.shape[0], conv_blocked.MAX_LANES * 2))
        how = chooser.decide(
            key, lambda: conv_timings(layer, shape, nnz, dtype, train, wide_images), lambda: fixed_rule(geometry, layer.density, x)
        )
    return how


def conv_timings(layer, shape: tuple, nnz: int, dtype: torch.dtype, train: bool, wide_images: int = 0) -> dict[str, float]:
    """Seconds per call of each way for a layer of `layer`'s geometry with `nnz` random active taps,
    on random inputs of `shape`: forward, and with `train` the backward too. The blocked ways run on
    `wide_images` images (default: as many as `shape`; up to two blocks of 64 where the batch has
    them, `conv_blocked.lanes`), their time scaled to `shape`'s count."""
    generator = torch.Generator().manual_seed(0)  # never the global one: probing must not change a run's draws
    geometry = layer.geometry
    positions = ops.random_structure((geometry.out_channels, geometry.taps), nnz, generator).positions
    probe = type(layer).__new__(type(layer))  # a SparseConv2d of the class's geometry, random taps
    nn.Module.__init__(probe)
    probe._set_geometry(geometry, layer.padding, "zeros")
    probe.register_buffer("indices", positions)
    probe.values = nn.Parameter(torch.randn(positions.numel(), generator=generator).to(dtype))
    probe.bias = None if layer.bias is None else nn.Parameter(torch.randn(geometry.out_channels, generator=generator).to(dtype))
    wide_images = wide_images or shape[0]
    x = torch.randn((max(shape[0], wide_images), *shape[1:]), generator=generator).to(dtype)
    grad_out = torch.randn((len(x), geometry.out_channels, *geometry.output_size(*shape[2:])), generator=generator).to(dtype)

    def run(how: str):
        images = wide_images if how in BLOCKED_WAYS else shape[0]
        inputs, grads = x[:images].requires_grad_(train), grad_out[:images]
        if not train:
            return lambda: compute(how, probe, inputs, probe.values, probe.bias, train=False)[0]
        leaves = [t for t in (inputs, probe.values, probe.bias) if t is not None]
        return lambda: torch.autograd.grad(SparseConv2dFunction.apply(inputs, probe.values, probe.bias, probe, how), leaves, grads)

    with torch.enable_grad() if train else torch.no_grad():
        timings = dispatch.time_candidates({how: run(how) for how in candidates(geometry, dtype, *shape[2:])})
    for how in BLOCKED_WAYS:
        if how in timings:
            timings[how] *= shape[0] / wide_images
    return timings
