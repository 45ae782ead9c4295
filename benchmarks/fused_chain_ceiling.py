"""How fast could a truly sparse SET-MLP step be if one compiled call ran all of it? A design probe.

Run by hand:  python benchmarks/fused_chain_ceiling.py [--hidden 1000,10000] [--rounds 9] [--steps 300]

At SET's batch of 2, itop's truly sparse step runs one custom autograd Function per layer, PyTorch's
ReLU, loss and optimizer, and a few tensor ops around each numba product. The products are a
fraction of the step (at H=1,000 about 0.2 of 1.0-1.2 ms). This script measures what is lost around
them. It times, on the same 784-H-H-H-10 network, the same batch, one thread, alternating blocks:

- autograd: SparseLinear layers and nn.ReLU in an nn.Sequential, cross-entropy, `loss.backward()`
  and a fused SGD step (momentum 0.9, weight decay), as `itop train --truly-sparse` runs it less
  the Sparsifier's hooks;
- one call: a numba function that runs the same step (forward, softmax cross-entropy, backward, SGD)
  with the same row kernels of `itop.sparse.native_kernels`, with no Python between the layers.

Each layer keeps 10 * (n_in + n_out) weights (the SET-MLP recipe's epsilon 10); the last layer is
dense. Before timing, one step of each from the same weights is compared: the updated values must
agree to float rounding. The "one call" form is not in itop: it shows the ceiling that a fused chain
of truly sparse layers could reach, not a result itop gives today. Prints the median of the per-round
ratios (autograd / one call) with quartiles.
"""

# ruff: noqa: I001 - itop.openmp first, as `import itop` is in a user's script (OpenMP's spin count)
from __future__ import annotations

import itop.openmp  # noqa: F401 - sets OpenMP's spin count before torch loads OpenMP

import argparse
import statistics
import time

import numba
import numpy as np
import torch
from machine import print_header
from torch import nn

from itop.sparse import SparseLinear, native

LR, DECAY, MOMENTUM = 0.005, 4e-3, 0.9


@numba.njit(fastmath=True, nogil=True)
def _sgd(values, grads, buffer, lr, decay, momentum):  # pragma: no cover - compiled
    for i in range(values.shape[0]):
        d = grads[i] + decay * values[i]
        b = momentum * buffer[i] + d
        buffer[i] = b
        values[i] -= lr * b


@numba.njit(fastmath=True, nogil=True)
def _relu(h):  # pragma: no cover - compiled
    for i in range(h.shape[0]):
        for b in range(h.shape[1]):
            if h[i, b] < 0:
                h[i, b] = 0.0


@numba.njit(fastmath=True, nogil=True)
def _relu_grad(part, h, out):  # pragma: no cover - compiled
    for i in range(out.shape[0]):
        for b in range(out.shape[1]):
            out[i, b] = part[i, b] if h[i, b] > 0 else 0.0


@numba.njit(fastmath=True, nogil=True)
def _bias_grad(g, out):  # pragma: no cover - compiled
    for i in range(g.shape[0]):
        total = 0.0
        for b in range(g.shape[1]):
            total += g[i, b]
        out[i] = total


def make_step(kernels):
    forward_rows, backward_rows, weight_grad_rows = kernels.forward_rows, kernels.backward_rows, kernels.weight_grad_rows

    @numba.njit(fastmath=True, nogil=True)
    def step(x_t, labels, csr, values, biases, acts, grads, parts, grad_values, grad_biases, buffers, bias_buffers):  # pragma: no cover
        layers = len(values)
        inputs = x_t
        for k in range(layers):  # forward: feature-major (features, batch) activations
            crow, col = csr[k]
            forward_rows(crow, col, values[k], inputs, biases[k], acts[k], 0, acts[k].shape[0])
            if k < layers - 1:
                _relu(acts[k])
            inputs = acts[k]
        out, g = acts[layers - 1], grads[layers - 1]
        batch = out.shape[1]
        loss = 0.0
        for b in range(batch):  # softmax cross-entropy, mean over the batch
            top = out[0, b]
            for c in range(out.shape[0]):
                top = max(top, out[c, b])
            total = 0.0
            for c in range(out.shape[0]):
                total += np.exp(out[c, b] - top)
            for c in range(out.shape[0]):
                g[c, b] = np.exp(out[c, b] - top) / total / batch
            g[labels[b], b] -= 1.0 / batch
            loss += (np.log(total) + top - out[labels[b], b]) / batch
        for k in range(layers - 1, -1, -1):  # backward
            crow, col = csr[k]
            _bias_grad(grads[k], grad_biases[k])
            if k > 0:
                backward_rows(crow, col, values[k], grads[k], acts[k - 1], grad_values[k], parts[k], 0, grads[k].shape[0])
                _relu_grad(parts[k], acts[k - 1], grads[k - 1])
            else:
                weight_grad_rows(crow, col, grads[0], x_t, grad_values[0], 0, grads[0].shape[0])
        for k in range(layers):  # SGD with momentum and weight decay
            _sgd(values[k], grad_values[k], buffers[k], LR, DECAY, MOMENTUM)
            _sgd(biases[k], grad_biases[k], bias_buffers[k], LR, DECAY, MOMENTUM)
        return loss

    return step


def build(hidden: int, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    sizes = [784, hidden, hidden, hidden, 10]
    modules: list[nn.Module] = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        nnz = fan_in * fan_out if fan_out == 10 else 10 * (fan_in + fan_out)
        modules += [SparseLinear(fan_in, fan_out, nnz=nnz), nn.ReLU()]
    return nn.Sequential(*modules[:-1])


class OneCall:
    """The whole step in one numba call, on copies of a model's values and biases."""

    def __init__(self, model: nn.Sequential, batch: int):
        layers = [m for m in model if isinstance(m, SparseLinear)]
        self.csr = tuple(layer.structure.arrays() for layer in layers)
        self.values = tuple(layer.values.detach().numpy().copy() for layer in layers)
        self.biases = tuple(layer.bias.detach().numpy().copy() for layer in layers)
        self.acts = tuple(np.zeros((layer.out_features, batch), np.float32) for layer in layers)
        self.grads = tuple(np.zeros((layer.out_features, batch), np.float32) for layer in layers)
        self.parts = tuple(np.zeros((layer.in_features, batch), np.float32) for layer in layers)
        self.grad_values = tuple(np.zeros_like(v) for v in self.values)
        self.grad_biases = tuple(np.zeros_like(b) for b in self.biases)
        self.buffers = tuple(np.zeros_like(v) for v in self.values)
        self.bias_buffers = tuple(np.zeros_like(b) for b in self.biases)
        self.step = make_step(native.kernels())

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> float:
        x_t = np.ascontiguousarray(x.numpy().T)
        return self.step(
            x_t,
            y.numpy(),
            self.csr,
            self.values,
            self.biases,
            self.acts,
            self.grads,
            self.parts,
            self.grad_values,
            self.grad_biases,
            self.buffers,
            self.bias_buffers,
        )


def autograd_step(model: nn.Sequential):
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=DECAY, fused=True)

    def step(x: torch.Tensor, y: torch.Tensor) -> float:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def check_equal(hidden: int, batch: int) -> float:
    """Largest difference of the values after one step of each form from the same weights."""
    model = build(hidden)
    one = OneCall(model, batch)
    x, y = torch.randn(batch, 784), torch.randint(0, 10, (batch,))
    autograd_step(model)(x, y)
    one(x, y)
    layers = [m for m in model if isinstance(m, SparseLinear)]
    return max(float(np.abs(layer.values.detach().numpy() - v).max()) for layer, v in zip(layers, one.values))


def compare(hidden: int, batch: int, rounds: int, steps: int) -> tuple[float, float, list[float]]:
    model = build(hidden)
    one, slow = OneCall(build(hidden), batch), autograd_step(model)
    gen = torch.Generator().manual_seed(1)
    data = [(torch.randn(batch, 784, generator=gen), torch.randint(0, 10, (batch,), generator=gen)) for _ in range(64)]

    def block(step) -> float:
        start = time.perf_counter()
        for i in range(steps):
            step(*data[i % len(data)])
        return (time.perf_counter() - start) / steps

    block(slow), block(one)
    times: dict[str, list[float]] = {"autograd": [], "one": []}
    for r in range(rounds):
        for name in ("autograd", "one") if r % 2 == 0 else ("one", "autograd"):
            times[name].append(block(slow if name == "autograd" else one))
    ratios = statistics.quantiles([a / o for a, o in zip(times["autograd"], times["one"])], n=4)
    return statistics.median(times["autograd"]), statistics.median(times["one"]), ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", default="1000,10000")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    torch.set_num_threads(1)
    batch = 2
    print_header(f"1 thread, batch {batch}, {args.rounds} alternating rounds of {args.steps} steps")
    print(
        "| network | one step of each from the same weights: largest value difference | autograd us/step | one call us/step | autograd / one call, median [q1, q3] |"
    )
    print("|---|---|---|---|---|")
    for hidden in (int(h) for h in args.hidden.split(",")):
        difference = check_equal(hidden, batch)
        slow, fast, (q1, ratio, q3) = compare(hidden, batch, args.rounds, args.steps)
        print(
            f"| 784-{hidden}-{hidden}-{hidden}-10 | {difference:.1e} | {slow * 1e6:.0f} | {fast * 1e6:.0f} | {ratio:.2f}x [{q1:.2f}, {q3:.2f}] |"
        )


if __name__ == "__main__":
    main()
