"""The numba kernels of `chain.py`: a run of truly sparse Linear layers with ReLUs between them,
forward in one call and backward in one call, through the row kernels of `native_kernels.py`.

Activations are feature-major, (features, batch), as the row kernels take them. In
`chain_forward` and `chain_backward` every layer runs on the calling thread over all its rows, in
one part: the same calls, in the same order, as the per-layer path takes for these sizes on one
thread (`ops.fixed_rule`'s "numba1"), so the numbers are the same bit for bit.
`cross_entropy_step` (`itop train`'s one-call step, `train/fused_step.py`) runs forward, loss and
backward in one call, each layer's rows in parts over numba's threads.
"""

import numba
import numpy as np
from numba import prange

from .native_kernels import backward_rows, forward_rows, row_sums, unsigned, weight_grad_rows

_FLAGS = {"cache": True, "nogil": True}


@numba.njit(**_FLAGS)
def chain_forward(x_t, csr, values, biases, activations):  # pragma: no cover - compiled
    """activations[k] = W_k @ activations[k - 1] + b_k (x_t for k = 0), ReLU on all but the last."""
    inputs = x_t
    last = len(values) - 1
    for k in range(len(values)):
        crow, col = csr[k]
        out = activations[k]
        forward_rows(crow, col, values[k], inputs, biases[k], out, 0, out.shape[0], k < last)
        inputs = out


@numba.njit(**_FLAGS)
def chain_backward(x_t, csr, values, activations, grads, grad_values, grad_biases, parts, input_grad):  # pragma: no cover - compiled
    """From grads[last] (the output gradient, feature-major), every layer's value and bias gradient,
    the gradient at each hidden activation into grads[k - 1] (through the ReLU), and, if
    `input_grad`, the input's into parts[0]."""
    for k in range(len(values) - 1, -1, -1):
        crow, col = csr[k]
        g = grads[k]
        row_sums(g, grad_biases[k], 0, g.shape[0])
        if k > 0:
            part, below = parts[k], activations[k - 1]
            backward_rows(crow, col, values[k], g, below, grad_values[k], part, 0, g.shape[0])
            _summed_relu_grad(part.reshape(1, part.shape[0], part.shape[1]), below, grads[k - 1], 0, below.shape[0])
        elif input_grad:
            backward_rows(crow, col, values[0], g, x_t, grad_values[0], parts[0], 0, g.shape[0])
        else:
            weight_grad_rows(crow, col, g, x_t, grad_values[0], 0, g.shape[0])


@numba.njit(**_FLAGS)
def _cross_entropy_grad(logits, labels, grad):  # pragma: no cover - compiled
    """The mean softmax cross-entropy of feature-major (classes, batch) logits, its gradient into
    `grad`, and how many columns' largest logit (the first, on ties) is the label."""
    classes, batch = logits.shape
    loss, correct = 0.0, 0
    for b in range(batch):
        best, top = 0, logits[0, b]
        for c in range(1, classes):
            if logits[c, b] > top:
                best, top = c, logits[c, b]
        total = 0.0
        for c in range(classes):
            total += np.exp(np.float64(logits[c, b]) - top)
        for c in range(classes):
            grad[c, b] = np.exp(np.float64(logits[c, b]) - top) / total / batch
        grad[labels[b], b] -= 1.0 / batch
        loss += (np.log(total) + top - logits[labels[b], b]) / batch
        correct += best == labels[b]
    return loss, correct


@numba.njit(parallel=True, **_FLAGS)
def cross_entropy_step(x_t, labels, csr, values, biases, activations, grads, grad_values, grad_biases, buffers):  # pragma: no cover
    """Forward through the chain (ReLU between layers), mean softmax cross-entropy, and the backward
    to every layer's value and bias gradients (not the input's): (loss, correct predictions).

    Each layer's rows are split into `buffers[k].shape[0]` equal parts, run over numba's threads
    (one part: the calling thread alone); each part scatters its input gradient into a buffer of
    its own, summed after in part order. The numbers depend on the part count, never on the threads
    that run the parts."""
    inputs = x_t
    last = len(values) - 1
    parts = buffers[0].shape[0]
    for k in range(len(values)):
        crow, col = csr[k]
        out, weights, bias = activations[k], values[k], biases[k]
        rows = out.shape[0]
        for p in prange(parts):
            forward_rows(crow, col, weights, inputs, bias, out, rows * p // parts, rows * (p + 1) // parts, k < last)
        inputs = out
    loss, correct = _cross_entropy_grad(activations[last], labels, grads[last])
    for k in range(last, -1, -1):
        crow, col = csr[k]
        g, weights, grad_weights = grads[k], values[k], grad_values[k]
        rows = g.shape[0]
        for p in prange(parts):  # one region a layer: a part's rows of g, then their gradients
            start, stop = rows * p // parts, rows * (p + 1) // parts
            if k < last:  # the ReLU's gradient, from the parts the layer above scattered
                _summed_relu_grad(buffers[k + 1], activations[k], g, start, stop)
            row_sums(g, grad_biases[k], start, stop)
            if k == 0:
                weight_grad_rows(crow, col, g, x_t, grad_weights, start, stop)
            else:
                backward_rows(crow, col, weights, g, activations[k - 1], grad_weights, buffers[k][p], start, stop)
    return loss, correct


@numba.njit(inline="always", **_FLAGS)
def _summed_relu_grad(buffer, activation, out, start, stop):  # pragma: no cover - compiled
    """Rows [start, stop) of out = (the sum of buffer's parts, in order) where the activation is
    positive, else 0: the input gradient of a ReLU whose output gradient was scattered in parts.
    One flat loop by unsigned offsets, without branches, which LLVM vectorises in any caller: three
    calls at H=10,000 took 9 us, where a flat loop by slices took 23 us alone and 66 us inside a
    loop over parts."""
    zero = out.dtype.type(0)
    total, above, scattered = out.reshape(-1), activation.reshape(-1), buffer.reshape(buffer.shape[0], -1)
    for i in range(unsigned(start * out.shape[1]), unsigned(stop * out.shape[1])):
        t = scattered[0, i]
        for q in range(1, scattered.shape[0]):
            t += scattered[q, i]
        total[i] = t if above[i] > zero else zero
