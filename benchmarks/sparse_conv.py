"""Truly sparse convolutions (`itop.sparse.SparseConv2d`) against dense PyTorch on CIFAR CNNs.

Run by hand (never by the test suite):

    python benchmarks/sparse_conv.py                  # every section, three models, batch 128 (about 10-20 min on 2 cores)
    python benchmarks/sparse_conv.py --quick          # smoke run: VGG-C only, batch 32, 3 rounds (2-3 min)
    python benchmarks/sparse_conv.py --only layers --only memory
    python benchmarks/sparse_conv.py --quick --batch 128 --only inference --only train   # quick, at the targets' batch

Workload: VGG-C, ResNet-18 (CIFAR) and WRN-16-8 (`itop.models`) on random CIFAR-shaped inputs
(3x32x32, 10 classes), batch 128, at ERK overall densities 0.05 and 0.02. The truly sparse model:
itop.Sparsifier(distribution="erk") draws the masks on a copy of the dense model, the dense model's
weights are multiplied by the same masks (both compute the same function: their eval outputs are
checked to agree within 1e-3), and in the copy every Conv2d / Linear whose mask is partial becomes
`SparseConv2d.from_dense(conv, mask)` / `SparseLinear.from_dense(linear, mask)`; a layer ERK gives
density 1 stays dense, as `itop.sparse.export` leaves it.

Sections (`--only NAME`, repeatable):
  inference  eval + no_grad forward, truly sparse vs dense (targets: >= 2x at 0.05, >= 3x at 0.02).
  train      one step: zero_grad, forward, cross-entropy, backward, SGD (lr 0.01, momentum 0.9,
             weight decay 5e-4) step; the truly sparse step also calls sparsifier.step() of an
             itop.Sparsifier(density, "erk", update_frequency=None) on it where one can be built
             (targets: >= 1.3x at 0.05, >= 2x at 0.02).
  layers     each conv layer of VGG-C at ERK 0.05 alone, on its input in the network: forward, and
             backward (input + weight gradient), SparseConv2d vs nn.Conv2d with the masked weight.
  crossover  VGG-C at ERK 0.1, 0.2, 0.3: the sparsest density at which dense wins again (ratio < 1).
  memory     VGG-C at 0.05: bytes of the conv layers (values + indices + bias against weight + bias,
             target <= 15%), the index structures the layers build on first use, and the whole
             model's parameters, buffers and SGD momentum.
  sparseprop sparseprop 0.1.14's SparseConv2d (IST-DASLab, CPU, if importable) beside itop on the
             same layers, masks and weights (forward + backward), and on the whole VGG-C.
  lenet5     `itop train --model lenet5 --data mnist5k --sparse` with and without --truly-sparse, as a
             user runs it: the second epoch's time (the first holds the probes), alternating runs,
             and both runs' test accuracy (the same seed takes the same decisions).

The targets are for batch 128: at another batch (`--quick`, `--batch`) the figures are printed and
not judged. Speed figures are RATIOS measured in this run (dense time / sparse time): both sides are
built once and warmed up, then timed in short alternating blocks (A B A B ..., the first side swapped
every round); each row gives the median times and the median of the per-round ratios with its
quartiles [q1, q3]. The kernels' choices are measured on the machine (`itop.sparse.dispatch`) with a
probe budget that covers every shape class (`--probe-budget`, 120 s): a user's cache reaches that
state after a few runs of the default 2 s. Every table begins with a `machine:` line (benchmarks/machine.py). Ends with a
markdown table of every figure, its target and PASS/MISS, and the CPU other processes used meanwhile.
"""

# ruff: noqa: I001 - itop.openmp is imported first, as `import itop` is in a user's script, so that OpenMP's
# spin count is set before torch loads OpenMP (see src/itop/openmp.py)
from __future__ import annotations

import itop.openmp

import argparse
import copy
import gc
import math
import os
import tempfile
import sys
import subprocess
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from machine import machine_line, print_header
from torch import nn

# the timing rules shared with the truly sparse Linear benchmark (alternating blocks, ratio quartiles)
from truly_sparse import LoadMonitor, fmt_q, infer_step, interleave, print_summary, quartiles, ratios, time_block, train_step

import itop
from itop.allocator import keep_freed_memory
from itop.models import create_model, get_model_spec
from itop.sparse import SparseConv2d, SparseLinear, dispatch
from itop.sparse.conv_ops import conv_kernels

SECTIONS = ("inference", "train", "layers", "crossover", "memory", "sparseprop", "lenet5")
MODELS = ("vgg-c", "resnet18", "wrn-16-8")
DENSITIES = (0.05, 0.02)
TARGET_BATCH = 128
INFERENCE_TARGETS = {0.05: 2.0, 0.02: 3.0}  # dense time / truly sparse time, eval + no_grad forward
TRAIN_TARGETS = {0.05: 1.3, 0.02: 2.0}  # the same for one training step
CROSSOVER_DENSITIES = (0.1, 0.2, 0.3)
MEMORY_TARGET = 0.15  # conv layers' values + indices + bias over the dense weight + bias
LAYERS_DENSITY = 0.05
SPARSEPROP_VERSION = "0.1.14"
SPARSEPROP_INSTALL = f"pip install pybind11 && pip install --no-build-isolation sparseprop=={SPARSEPROP_VERSION}"
CLASSES = 10
MIN_LOAD_WALL_S = 2.0  # a section shorter than this gets no load figure

SUMMARY: list[tuple[str, str, str, str, str]] = []  # section, figure, value, target, verdict


def record(section: str, figure: str, value: str, target: str, ok: bool | None) -> None:
    """One row of the final table; ok None means no verdict (printed for information)."""
    verdict = "-" if ok is None else ("PASS" if ok else "MISS")
    SUMMARY.append((section, figure, value, target, verdict))


def judged(target: str, batch: int) -> str:
    """The target as printed: judged only at the batch it is set for."""
    return target if batch == TARGET_BATCH else f"{target} at batch {TARGET_BATCH} (not judged at batch {batch})"


@dataclass
class Plan:
    """How much each section measures: the default run, or --quick's smoke run."""

    models: tuple[str, ...]
    batch: int
    rounds: int  # alternating rounds per whole-model row
    block_s: float  # a whole-model block: this long, at least one step
    layer_rounds: int
    layer_block_s: float


def make_plan(args: argparse.Namespace) -> Plan:
    if args.quick:
        plan = Plan(models=("vgg-c",), batch=32, rounds=3, block_s=0.1, layer_rounds=3, layer_block_s=0.03)
    else:
        plan = Plan(models=MODELS, batch=TARGET_BATCH, rounds=7, block_s=0.5, layer_rounds=9, layer_block_s=0.1)
    if args.batch is not None:
        plan.batch = args.batch
    return plan


# ----------------------------------------------------------------------------- models
def sgd(model: nn.Module) -> torch.optim.Optimizer:
    """The CIFAR training recipe's optimizer: SGD lr 0.01, momentum 0.9, weight decay 5e-4."""
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)


def input_shape(name: str) -> tuple[int, int, int]:
    spec = get_model_spec(name)
    return spec.in_channels, spec.image_size, spec.image_size


def to_truly_sparse(model: nn.Module, masks: dict[str, torch.Tensor]) -> list[str]:
    """Replace, in place, each nn.Conv2d / nn.Linear whose weight mask is partial by its truly
    sparse layer holding the weights at the mask; returns the names of the layers left dense
    (mask full: ERK's density 1, where a sparse layer would only cost)."""
    left_dense = []
    for param_name, mask in masks.items():
        module_name, _, kind = param_name.rpartition(".")
        module = model.get_submodule(module_name)
        if kind != "weight" or type(module) not in (nn.Conv2d, nn.Linear):
            continue
        if bool(mask.all()):
            left_dense.append(module_name)
            continue
        layer = SparseConv2d.from_dense(module, mask) if type(module) is nn.Conv2d else SparseLinear.from_dense(module, mask)
        parent, _, child = module_name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer)
    return left_dense


def conv_density(model: nn.Module) -> float:
    """Active conv weights over the conv weights of the dense shapes (dense convs count as full)."""
    active = total = 0
    for module in model.modules():
        if isinstance(module, SparseConv2d):
            active, total = active + module.nnz, total + math.prod(module.weight_shape)
        elif isinstance(module, nn.Conv2d):
            active, total = active + module.weight.numel(), total + module.weight.numel()
    return active / total


@dataclass
class Pair:
    """A dense model with masked weights and its truly sparse copy: the same function."""

    name: str
    density: float
    dense: nn.Module
    sparse: nn.Module
    left_dense: list[str]
    max_diff: float

    def describe(self) -> str:
        kinds = [type(m) for m in self.sparse.modules()]
        return (
            f"{self.name} at ERK {self.density}: {kinds.count(SparseConv2d)} SparseConv2d + {kinds.count(SparseLinear)} SparseLinear, "
            f"left dense (ERK density 1): {', '.join(self.left_dense) or 'none'}; conv density {conv_density(self.sparse):.4f}; "
            f"eval outputs agree, max |dense - sparse| = {self.max_diff:.1e}"
        )


def build_pair(name: str, density: float, seed: int = 0) -> Pair:
    """The dense model and its truly sparse copy at ERK `density` (see the module docstring)."""
    torch.manual_seed(seed)
    dense = create_model(name, num_classes=CLASSES)
    sparse = copy.deepcopy(dense)
    sparsifier = itop.Sparsifier(
        sparse, sgd(sparse), density=density, distribution="erk", update_frequency=None, seed=seed, sparse_linear=False
    )
    masks = {n: m.clone() for n, m in sparsifier.masks.items()}
    sparsifier.detach()
    with torch.no_grad():
        for param_name, param in dense.named_parameters():
            if param_name in masks:
                param.mul_(masks[param_name])
    left_dense = to_truly_sparse(sparse, masks)
    x = torch.randn(4, *input_shape(name), generator=torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        expected, got = dense.eval()(x), sparse.eval()(x)
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3)
    return Pair(name, density, dense, sparse, left_dense, float((got - expected).abs().max()))


def attach_sparsifier(model: nn.Module, optimizer: torch.optim.Optimizer, density: float) -> tuple[itop.Sparsifier | None, str]:
    """itop.Sparsifier on the truly sparse model, or None and why it could not be built."""
    try:
        sparsifier = itop.Sparsifier(model, optimizer, density=density, distribution="erk", update_frequency=None, seed=0)
    except Exception as exc:  # noqa: BLE001 - the engine's SparseConv2d support is being written: say why, time without it
        return None, f"not attached ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    held = {id(layer) for layer in sparsifier.layers.values()}
    convs = [m for m in model.modules() if isinstance(m, SparseConv2d)]
    linears = [m for m in model.modules() if isinstance(m, SparseLinear)]
    return sparsifier, (
        f"attached: holds {sum(id(m) in held for m in convs)} of {len(convs)} SparseConv2d and "
        f"{sum(id(m) in held for m in linears)} of {len(linears)} SparseLinear layers, {len(sparsifier.params)} masked layers"
    )


# ----------------------------------------------------------------------------- timing
def cifar_batches(name: str, batch: int, count: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [
        (torch.randn(batch, *input_shape(name), generator=generator), torch.randint(0, CLASSES, (batch,), generator=generator))
        for _ in range(count)
    ]


def calibrated(steps: dict[str, Callable[[], None]], rounds: int, block_s: float) -> dict[str, list[float]]:
    """Per-step seconds of each side in each of `rounds` alternating rounds; each side's block
    holds as many steps as fill `block_s` (at least one), from one step timed after a first
    untimed one (kernels compiled, optimizer state and index structures built)."""
    sides = {}
    for name, step in steps.items():
        step()
        sides[name] = (step, max(1, round(block_s / time_block(step, 1))))
    return interleave(sides, rounds)


def model_times(pair: Pair, kind: str, plan: Plan) -> tuple[tuple, tuple, tuple, str]:
    """(dense, sparse, dense / sparse) median and quartiles of `kind` ("inference" or "train") for
    the pair, and for training what became of the Sparsifier on the truly sparse model."""
    data = cifar_batches(pair.name, plan.batch)
    note = ""
    if kind == "inference":
        steps = {"dense": infer_step(pair.dense.eval(), data[0][0]), "sparse": infer_step(pair.sparse.eval(), data[0][0])}
    else:
        optimizer = sgd(pair.sparse.train())
        sparsifier, note = attach_sparsifier(pair.sparse, optimizer, pair.density)
        after = sparsifier.step if sparsifier is not None else None
        steps = {
            "dense": train_step(pair.dense.train(), sgd(pair.dense), data),
            "sparse": train_step(pair.sparse, optimizer, data, after=after),
        }
    times = calibrated(steps, plan.rounds, plan.block_s)
    return quartiles(times["dense"]), quartiles(times["sparse"]), ratios(times["dense"], times["sparse"]), note


# ----------------------------------------------------------------------------- sections: inference, train
def section_models(kind: str, plan: Plan) -> None:
    targets = INFERENCE_TARGETS if kind == "inference" else TRAIN_TARGETS
    what = "eval + no_grad forward" if kind == "inference" else "training step (SGD, with sparsifier.step() where attached)"
    print(f"\n## {kind}: {what}, batch {plan.batch}, CIFAR-shaped random inputs: truly sparse vs dense")
    rows, notes = [], []
    for name in plan.models:
        for density in DENSITIES:
            pair = build_pair(name, density)
            notes.append(pair.describe())
            dense, sparse, r, note = model_times(pair, kind, plan)
            if note:
                notes.append(f"{name} at ERK {density}: Sparsifier {note}")
            target = judged(f">= {targets[density]:g}x", plan.batch)
            rows.append(f"| {name} | {density} | {fmt_q(dense, 1e3, 1)} | {fmt_q(sparse, 1e3, 1)} | {fmt_q(r, unit='x')} | {target} |")
            record(
                kind,
                f"{name} ERK {density}, batch {plan.batch}",
                f"{r[0]:.2f}x [{r[1]:.2f}, {r[2]:.2f}]",
                target,
                r[0] >= targets[density] if plan.batch == TARGET_BATCH else None,
            )
            del pair
            gc.collect()
    print("\n".join(notes))
    print(f"{plan.rounds} alternating rounds per row")
    print_header()
    unit = "ms" if kind == "inference" else "ms/step"
    print(f"| model | ERK density | dense {unit} median [q1, q3] | truly sparse {unit} | sparse faster by, median [q1, q3] | target |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


# ----------------------------------------------------------------------------- section: layers
def conv_inputs(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each Conv2d's input on an eval forward of `x`, by module name."""
    captured: dict[str, torch.Tensor] = {}

    def keep(name: str) -> Callable:
        return lambda module, args: captured.__setitem__(name, args[0].detach().clone())

    hooks = [m.register_forward_pre_hook(keep(name)) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for hook in hooks:
            hook.remove()
    return captured


def forward_call(module: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def call() -> None:
        with torch.no_grad():
            module(x)

    return call


def backward_call(module: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    """The backward alone: the input gradient and every parameter's gradient, from one forward
    whose graph is kept (retain_graph), for a fixed random output gradient."""
    x = x.detach().requires_grad_()
    inputs = (x, *module.parameters())
    out = module(x)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(0))

    def call() -> None:
        torch.autograd.grad(out, inputs, grad, retain_graph=True)

    return call


def shape_text(conv: nn.Conv2d | SparseConv2d, x: torch.Tensor) -> str:
    (kh, kw), (sh, sw) = conv.kernel_size, conv.stride
    stride = f"s{sh}" if sh == sw else f"s{sh}x{sw}"
    return f"{conv.out_channels}, {conv.in_channels}, {kh}, {kw}, {stride}, {x.shape[2]}x{x.shape[3]}"


def section_layers(plan: Plan) -> None:
    name = "vgg-c"
    print(
        f"\n## layers: each conv layer of {name} at ERK {LAYERS_DENSITY}, batch {plan.batch}, on its input in the network: "
        "SparseConv2d vs nn.Conv2d with the masked weight (bias on both); backward = input gradient + weight (and bias) gradient"
    )
    pair = build_pair(name, LAYERS_DENSITY)
    print(pair.describe())
    inputs = conv_inputs(pair.dense, cifar_batches(name, plan.batch, 1)[0][0])
    rows, losing = [], {"forward": [], "backward": []}
    totals = {key: 0.0 for key in ("forward dense", "forward sparse", "backward dense", "backward sparse")}
    for layer_name, x in inputs.items():
        dense_conv, sparse_conv = pair.dense.get_submodule(layer_name), pair.sparse.get_submodule(layer_name)
        if not isinstance(sparse_conv, SparseConv2d):
            rows.append(f"| {layer_name} | {shape_text(dense_conv, x)} | 1 | left dense (nn.Conv2d) | - | - | - | - | - |")
            continue
        steps = {
            "forward dense": forward_call(dense_conv, x),
            "forward sparse": forward_call(sparse_conv, x),
            "backward dense": backward_call(dense_conv, x),
            "backward sparse": backward_call(sparse_conv, x),
        }
        times = calibrated(steps, plan.layer_rounds, plan.layer_block_s)
        cells = []
        for part in ("forward", "backward"):
            dense, sparse = quartiles(times[f"{part} dense"]), quartiles(times[f"{part} sparse"])
            r = ratios(times[f"{part} dense"], times[f"{part} sparse"])
            totals[f"{part} dense"] += dense[0]
            totals[f"{part} sparse"] += sparse[0]
            if r[0] < 1:
                losing[part].append(f"{layer_name} ({r[0]:.2f}x)")
            cells += [f"{dense[0] * 1e3:.2f}", f"{sparse[0] * 1e3:.2f}", fmt_q(r, unit="x")]
        rows.append(f"| {layer_name} | {shape_text(dense_conv, x)} | {sparse_conv.density:.4f} | " + " | ".join(cells) + " |")
    whole = {part: totals[f"{part} dense"] / totals[f"{part} sparse"] for part in ("forward", "backward")}
    rows.append(
        f"| all converted layers | (sum of medians) | - | {totals['forward dense'] * 1e3:.2f} | {totals['forward sparse'] * 1e3:.2f} | "
        f"{whole['forward']:.2f}x (ratio of sums) | {totals['backward dense'] * 1e3:.2f} | {totals['backward sparse'] * 1e3:.2f} | "
        f"{whole['backward']:.2f}x (ratio of sums) |"
    )
    print(f"{plan.layer_rounds} alternating rounds per layer, blocks of about {plan.layer_block_s:g} s")
    print_header()
    print(
        "| layer | out, in, kh, kw, stride, input HxW | density | forward dense ms | forward sparse ms | forward: sparse faster by, "
        "median [q1, q3] | backward dense ms | backward sparse ms | backward: sparse faster by, median [q1, q3] |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    for part in ("forward", "backward"):
        print(f"{part}: dense faster at {', '.join(losing[part]) or 'no layer'}")
        record("layers", f"{name} conv layers, {part}, batch {plan.batch}", f"{whole[part]:.2f}x (ratio of summed medians)", "report", None)
        record("layers", f"{name} layers where dense wins ({part})", ", ".join(losing[part]) or "none", "report", None)


# ----------------------------------------------------------------------------- section: crossover
def section_crossover(plan: Plan) -> None:
    name = "vgg-c"
    print(f"\n## crossover: {name} at ERK {', '.join(map(str, CROSSOVER_DENSITIES))}, batch {plan.batch}: where dense wins again")
    rows, notes, losing = [], [], {"inference": [], "train": []}
    for density in CROSSOVER_DENSITIES:
        pair = build_pair(name, density)
        notes.append(pair.describe())
        cells = []
        for kind in ("inference", "train"):
            dense, sparse, r, note = model_times(pair, kind, plan)
            if note:
                notes.append(f"{name} at ERK {density}: Sparsifier {note}")
            if r[0] < 1:
                losing[kind].append(density)
            cells += [fmt_q(dense, 1e3, 1), fmt_q(sparse, 1e3, 1), fmt_q(r, unit="x")]
        rows.append(f"| {density} | {conv_density(pair.sparse):.4f} | " + " | ".join(cells) + " |")
        del pair
        gc.collect()
    print("\n".join(notes))
    print_header()
    print(
        "| ERK density | conv density | inference dense ms | inference sparse ms | inference: sparse faster by | "
        "train dense ms/step | train sparse ms/step | train: sparse faster by |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    for kind in ("inference", "train"):
        found = min(losing[kind]) if losing[kind] else None
        text = f"from ERK {found} (the sparsest tested with ratio < 1)" if found else f"not up to ERK {max(CROSSOVER_DENSITIES)}"
        print(f"dense wins again ({kind}): {text}")
        record("crossover", f"{name} {kind}, dense wins again, batch {plan.batch}", text, "report", None)


# ----------------------------------------------------------------------------- section: memory
def nbytes(tensor: torch.Tensor | None) -> int:
    return 0 if tensor is None else tensor.numel() * tensor.element_size()


def conv_bytes(model: nn.Module, with_bias: bool) -> int:
    """The conv layers' storage: values + indices for SparseConv2d, the weight for nn.Conv2d."""
    total = 0
    for module in model.modules():
        if isinstance(module, SparseConv2d):
            total += nbytes(module.values) + nbytes(module.indices)
        elif isinstance(module, nn.Conv2d):
            total += nbytes(module.weight)
        else:
            continue
        total += nbytes(module.bias) if with_bias else 0
    return total


def derived_bytes(model: nn.Module) -> int:
    """Bytes of what the SparseConv2d layers built from their indices on first use (CSR, the
    stride-1 kernels' window starts, transposed CSR), each buffer once; views of a buffer, and the
    indices and values themselves, not counted again."""
    total = 0
    for layer in (m for m in model.modules() if isinstance(m, SparseConv2d)):
        seen = {layer.indices.untyped_storage().data_ptr(), layer.values.untyped_storage().data_ptr()}
        pending = list(vars(layer.structure).values())
        while pending:
            item = pending.pop()
            if isinstance(item, dict):
                pending += item.values()
            elif isinstance(item, (tuple, list)):
                pending += item
            elif isinstance(item, torch.Tensor) and item.layout == torch.strided:
                pointer, size = item.untyped_storage().data_ptr(), item.untyped_storage().nbytes()
                total += 0 if pointer in seen else size
                seen.add(pointer)
            elif isinstance(item, np.ndarray):
                pointer = item.__array_interface__["data"][0]
                total += 0 if pointer in seen else item.nbytes
                seen.add(pointer)
    return total


def model_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Parameters, buffers (BatchNorm statistics; the truly sparse layers' indices) and SGD momentum."""
    momentum = sum(nbytes(state.get("momentum_buffer")) for state in optimizer.state.values())
    return sum(nbytes(p) for p in model.parameters()) + sum(nbytes(b) for b in model.buffers()) + momentum


def section_memory(plan: Plan) -> None:
    name, density = "vgg-c", 0.05
    pair = build_pair(name, density)
    layer = next(m for m in pair.sparse.modules() if isinstance(m, SparseConv2d))
    print(
        f"\n## memory: {name} at ERK {density}, {layer.values.dtype} values, {layer.indices.dtype} indices; after one training step (batch 8)"
    )
    print(pair.describe())
    data = cifar_batches(name, 8, 1)
    optimizers = {}
    for side in ("dense", "sparse"):
        model = getattr(pair, side).train()
        optimizers[side] = sgd(model)
        train_step(model, optimizers[side], data)()
    conv_sparse, conv_dense = conv_bytes(pair.sparse, True), conv_bytes(pair.dense, True)
    weights_sparse, weights_dense = conv_bytes(pair.sparse, False), conv_bytes(pair.dense, False)
    derived = derived_bytes(pair.sparse)
    whole_sparse, whole_dense = model_bytes(pair.sparse, optimizers["sparse"]), model_bytes(pair.dense, optimizers["dense"])
    share = conv_sparse / conv_dense
    rows = [
        (
            "conv layers: values + indices + bias (left-dense convs: weight + bias) vs weight + bias",
            conv_sparse,
            conv_dense,
            f"<= {MEMORY_TARGET:.0%}",
        ),
        ("conv layers, weights only: values + indices vs weight", weights_sparse, weights_dense, "-"),
        ("index structures the SparseConv2d layers built on first use (CSR, window starts)", derived, conv_dense, "-"),
        ("whole model: parameters + buffers + SGD momentum", whole_sparse, whole_dense, "-"),
    ]
    print_header()
    print("| what | truly sparse MB | dense MB | sparse / dense | target |")
    print("|---|---|---|---|---|")
    for what, sparse, dense, target in rows:
        print(f"| {what} | {sparse / 1e6:.3f} | {dense / 1e6:.3f} | {sparse / dense:.1%} | {target} |")
    record(
        "memory",
        f"{name} ERK {density}: conv values + indices + bias vs weight + bias",
        f"{share:.1%}",
        f"<= {MEMORY_TARGET:.0%}",
        share <= MEMORY_TARGET,
    )
    record(
        "memory",
        f"{name} ERK {density}: conv index structures built on first use",
        f"{derived / 1e6:.2f} MB = {derived / conv_dense:.1%} of the dense convs",
        "report",
        None,
    )
    record(
        "memory", f"{name} ERK {density}: parameters + buffers + SGD momentum", f"{whole_sparse / whole_dense:.1%} of dense", "report", None
    )


# ----------------------------------------------------------------------------- section: sparseprop
def sparseprop_limit(conv: nn.Conv2d) -> str | None:
    """Why sparseprop's SparseConv2d cannot take this layer (its module reads one kernel size, one
    stride of 1 or 2 and one padding, without dilation or groups), or None."""
    (kh, kw), (sh, sw), padding = conv.kernel_size, conv.stride, conv.padding
    if kh != kw:
        return f"kernel {kh}x{kw} is not square"
    if sh != sw or sh not in (1, 2):
        return f"stride {conv.stride}: only 1 or 2 in both directions"
    if isinstance(padding, str) or padding[0] != padding[1]:
        return f"padding {padding!r}: only one int for both sides"
    if conv.dilation != (1, 1) or conv.groups != 1:
        return "dilation or groups"
    return None


def sparseprop_layer(modules, conv: nn.Conv2d, x: torch.Tensor) -> nn.Module:
    """sparseprop's conv holding the masked `conv`'s nonzero weights, in the kernel layout its own
    `sparsify_conv2d_auto` times faster for this input shape; checked against the dense conv."""
    layer = modules.sparsify_conv2d_auto(copy.deepcopy(conv), tuple(x.shape))
    with torch.no_grad():
        torch.testing.assert_close(layer(x), conv(x), rtol=1e-3, atol=1e-3)
    return layer


def forward_backward_call(module: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    """Forward with autograd, then the input and parameter gradients, for a fixed output gradient."""
    x = x.detach().requires_grad_()
    inputs = (x, *module.parameters())
    with torch.no_grad():
        grad = torch.randn(module(x).shape, generator=torch.Generator().manual_seed(0))

    def call() -> None:
        torch.autograd.grad(module(x), inputs, grad)

    return call


class Copied(nn.Module):
    """A layer whose output is copied: sparseprop's SparseLinear returns a view of a custom
    Function's output, which autograd forbids an inplace ReLU to change."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x).clone()


def sparseprop_model(modules, pair: Pair, inputs: dict[str, torch.Tensor]) -> nn.Module:
    """The dense (masked) model with sparseprop's layers where itop has truly sparse ones."""
    model = copy.deepcopy(pair.dense)
    for name, module in pair.sparse.named_modules():
        if isinstance(module, SparseConv2d):
            layer = sparseprop_layer(modules, pair.dense.get_submodule(name), inputs[name])
        elif isinstance(module, SparseLinear):  # its output is a view, which VGG's inplace ReLU may not change: a copy
            layer = Copied(modules.SparseLinear.from_dense(pair.dense.get_submodule(name)))
        else:
            continue
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer)
    return model


def section_sparseprop(plan: Plan) -> None:
    name = "vgg-c"
    print(
        f"\n## sparseprop: sparseprop {SPARSEPROP_VERSION}'s SparseConv2d beside itop's, {name} at ERK {LAYERS_DENSITY}, batch {plan.batch}"
    )
    try:
        import sparseprop.modules as modules
    except Exception as exc:  # noqa: BLE001 - a missing or broken build: say so, the other sections stand
        print(f"sparseprop not importable ({type(exc).__name__}: {exc}); skipped. To include it: {SPARSEPROP_INSTALL}")
        record("sparseprop", "section", "not installed", "-", None)
        return
    pair = build_pair(name, LAYERS_DENSITY)
    print(pair.describe())
    inputs = conv_inputs(pair.dense, cifar_batches(name, plan.batch, 1)[0][0])
    print_header()
    print(
        "| layer | out, in, kh, kw, stride, input HxW | density | itop fwd+bwd ms | sparseprop fwd+bwd ms | itop faster by, median [q1, q3] |"
    )
    print("|---|---|---|---|---|---|")
    summed, refused = {"itop": 0.0, "sparseprop": 0.0}, []
    for layer_name, x in inputs.items():
        conv, ours = pair.dense.get_submodule(layer_name), pair.sparse.get_submodule(layer_name)
        head = f"| {layer_name} | {shape_text(conv, x)} |"
        if not isinstance(ours, SparseConv2d):
            print(f"{head} 1 | left dense (nn.Conv2d) | - | - |")
            continue
        reason = sparseprop_limit(conv)
        try:
            theirs = None if reason else sparseprop_layer(modules, conv, x)
        except Exception as exc:  # noqa: BLE001 - one layer it cannot run is a table cell, not the end of the section
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if reason:
            print(f"{head} {ours.density:.4f} | - | sparseprop cannot run it: {reason} | - |")
            refused.append(f"{layer_name} ({reason})")
            continue
        times = calibrated(
            {"itop": forward_backward_call(ours, x), "sparseprop": forward_backward_call(theirs, x)}, plan.layer_rounds, plan.layer_block_s
        )
        medians = {side: quartiles(times[side])[0] for side in summed}
        for side, median in medians.items():
            summed[side] += median
        r = ratios(times["sparseprop"], times["itop"])
        print(f"{head} {ours.density:.4f} | {medians['itop'] * 1e3:.2f} | {medians['sparseprop'] * 1e3:.2f} | {fmt_q(r, unit='x')} |")
    if summed["itop"] > 0:
        whole = summed["sparseprop"] / summed["itop"]
        print(
            f"| layers both ran | (sum of medians) | - | {summed['itop'] * 1e3:.2f} | {summed['sparseprop'] * 1e3:.2f} | {whole:.2f}x (ratio of sums) |"
        )
        record("sparseprop", f"itop vs sparseprop, {name} conv layers fwd+bwd", f"{whole:.2f}x (ratio of summed medians)", "report", None)
    record("sparseprop", f"{name} layers sparseprop cannot run", ", ".join(refused) or "none", "report", None)
    try:
        theirs = sparseprop_model(modules, pair, inputs)
    except Exception as exc:  # noqa: BLE001
        print(f"whole {name} with sparseprop's layers: cannot be built ({type(exc).__name__}: {exc})")
        record("sparseprop", f"whole {name}", "cannot be built", "report", None)
        return
    data = cifar_batches(name, plan.batch)
    steps = {
        "itop inference": infer_step(pair.sparse.eval(), data[0][0]),
        "sparseprop inference": infer_step(theirs.eval(), data[0][0]),
    }
    inference = calibrated(steps, plan.rounds, plan.block_s)
    steps = {
        "itop train": train_step(pair.sparse.train(), sgd(pair.sparse), data),
        "sparseprop train": train_step(theirs.train(), sgd(theirs), data),
    }
    training = calibrated(steps, plan.rounds, plan.block_s)
    print(f"\nwhole {name} (sparseprop's SparseConv2d and SparseLinear where itop's are), {plan.rounds} alternating rounds")
    print_header()
    print("| step | itop ms | sparseprop ms | itop faster by, median [q1, q3] |")
    print("|---|---|---|---|")
    for kind, times in (("inference", inference), ("train", training)):
        r = ratios(times[f"sparseprop {kind}"], times[f"itop {kind}"])
        itop_ms, theirs_ms = quartiles(times[f"itop {kind}"])[0] * 1e3, quartiles(times[f"sparseprop {kind}"])[0] * 1e3
        print(f"| {kind} | {itop_ms:.1f} | {theirs_ms:.1f} | {fmt_q(r, unit='x')} |")
        record("sparseprop", f"itop vs sparseprop, whole {name} {kind}", f"{r[0]:.2f}x [{r[1]:.2f}, {r[2]:.2f}]", "report", None)


# ----------------------------------------------------------------------------- main
# ----------------------------------------------------------------------------- section: lenet5
LENET5_EPOCH = re.compile(r"^epoch 2/2 .*\| ([0-9.]+) s$", re.MULTILINE)
LENET5_ACCURACY = re.compile(r"^test accuracy ([0-9.]+)%", re.MULTILINE)


def lenet5_run(truly_sparse: bool, directory: str) -> tuple[float, float]:
    """One `itop train` run of two epochs in its own process: (second epoch's seconds, test accuracy)."""
    command = [sys.executable, "-m", "itop", "train", "--model", "lenet5", "--data", "mnist5k", "--sparse", "--epochs", "2"]
    command += ["--no-progress", "--seed", "0", "--save", directory] + (["--truly-sparse"] if truly_sparse else [])
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return float(LENET5_EPOCH.search(done.stdout).group(1)), float(LENET5_ACCURACY.search(done.stdout).group(1))


def section_lenet5(plan: Plan) -> None:
    rounds = 2 if plan.rounds <= 3 else 5  # --quick: two
    print(f"\n## lenet5: itop train --model lenet5 --data mnist5k --sparse, masked against --truly-sparse, {rounds} alternating rounds")
    times: dict[str, list[float]] = {"masked": [], "truly sparse": []}
    accuracy: dict[str, set[float]] = {"masked": set(), "truly sparse": set()}
    with tempfile.TemporaryDirectory() as scratch:
        for r in range(rounds):
            for kind in ("masked", "truly sparse") if r % 2 == 0 else ("truly sparse", "masked"):
                seconds, acc = lenet5_run(kind == "truly sparse", os.path.join(scratch, f"{kind}-{r}"))
                times[kind].append(seconds)
                accuracy[kind].add(acc)
    r = ratios(times["masked"], times["truly sparse"])
    print_header()
    print("| run | epoch s, median [q1, q3] | test accuracy % |")
    print("|---|---|---|")
    for kind in times:
        print(f"| {kind} | {fmt_q(quartiles(times[kind]), 1, 2)} | {', '.join(f'{a:.2f}' for a in sorted(accuracy[kind]))} |")
    print(f"truly sparse faster by {fmt_q(r, unit='x')} (masked epoch / truly sparse epoch, per round)")
    record("lenet5", "itop train lenet5, masked / truly sparse epoch", f"{r[0]:.2f}x [{r[1]:.2f}, {r[2]:.2f}]", "report", None)
    same = accuracy["masked"] == accuracy["truly sparse"] and len(accuracy["masked"]) == 1
    record("lenet5", "same test accuracy, masked and truly sparse", "yes" if same else f"no: {accuracy}", "report", None)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=SECTIONS, help="run this section (repeatable); default: all")
    parser.add_argument("--quick", action="store_true", help="smoke run: VGG-C only, batch 32, fewer rounds")
    parser.add_argument("--batch", type=int, default=None, help=f"batch size (default {TARGET_BATCH}, 32 with --quick)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--probe-budget",
        type=float,
        default=120.0,
        help="seconds of kernel probes in this process (default 120: every shape class measured, the state a user's "
        "cache reaches after a few runs of itop's default 2 s each)",
    )
    parser.add_argument(
        "--allocator",
        choices=("kept", "glibc"),
        default="kept",
        help="kept (default, as `itop train` runs): glibc keeps freed memory for reuse (itop.allocator), on both sides; "
        "glibc: its defaults, which map and fault in large tensors afresh on every call",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.allocator == "kept":
        keep_freed_memory()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # denormal slow-downs would otherwise swamp the comparison
    dispatch.reset(budget=args.probe_budget)
    plan = make_plan(args)
    chosen = args.only or list(SECTIONS)
    print(
        f"{args.threads} threads, sections: {', '.join(chosen)}; models {', '.join(plan.models)}; batch {plan.batch}"
        + (" (quick: VGG-C only, fewer rounds; figures at another batch than 128 are not judged)" if args.quick else "")
    )
    print(machine_line())
    kernels = (
        "direct numba kernels (itop.sparse.conv_kernels)" if conv_kernels() is not None else "im2col through PyTorch's sparse products"
    )
    print(f"itop SparseConv2d on the CPU: {kernels}")
    print(
        f"kernel choices: probed on this machine, up to {args.probe_budget:g} s of probes in this process "
        f"(itop's default is {dispatch.PROBE_BUDGET_S:g} s a process; the classes left over take the fixed rule until a later run measures them)"
    )
    runners = {
        "inference": partial(section_models, "inference"),
        "train": partial(section_models, "train"),
        "layers": section_layers,
        "crossover": section_crossover,
        "memory": section_memory,
        "sparseprop": section_sparseprop,
        "lenet5": section_lenet5,
    }
    busy: dict[str, float] = {}
    for name in SECTIONS:
        if name not in chosen:
            continue
        start, monitor = time.perf_counter(), LoadMonitor()
        try:
            runners[name](plan)
        except Exception as exc:  # noqa: BLE001 - one section's failure must not hide the others
            print(f"section {name} failed: {type(exc).__name__}: {exc}")
            record(name, "section", "failed", "-", False)
        elapsed = time.perf_counter() - start
        if elapsed < MIN_LOAD_WALL_S:  # /proc/stat counts in clock ticks: over a fraction of a second its share is noise
            busy[name] = float("nan")
            print(f"({name}: {elapsed:.1f} s, too short to tell the other processes' load)")
            continue
        busy[name] = monitor.others()
        warn = "  ** figures disturbed by other processes **" if busy[name] > 0.25 else ""
        print(f"({name}: {elapsed:.0f} s; other processes kept {busy[name]:.2f} of {os.cpu_count()} cores busy on average){warn}")
    print_summary(busy, SUMMARY)


if __name__ == "__main__":
    main()
