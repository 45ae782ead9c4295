"""Condensed constant-fan-in layers: SRigL's representation for fast inference.

SRigL (Lasby et al., ICLR 2024, "Dynamic Sparse Training with Structured Sparsity") trains layers
whose output neurons all hold the same number k of active weights ("constant fan-in"); a neuron may
also be ablated (no active weight: its output is its bias). Such a layer is stored condensed:

- `values` (the parameter): a dense (rows_kept, k) matrix, the active weights of each kept neuron;
- `indices` (`CondensedLinear`) or `taps` (`CondensedConv2d`): a buffer of the same shape, each
  row's input positions (flat taps over (in_channels/groups, kh, kw) for a convolution), sorted
  ascending, int32 where the layer's inputs fit;
- `rows`: a buffer, which output neurons are kept (ascending, int64);
- `bias`: over all output neurons, as nn.Linear's / nn.Conv2d's.

Every row has the same length, so no row pointer is read and a row's loop has a fixed trip count.
`CondensedLinear`'s inference on the CPU (grad off) runs the numba kernels of
`condensed_kernels.py` (batch 1: one gathered dot product per kept neuron; batches of 2-5: two at
a time on the input as it is; larger ones from the transposed input, a B-vector per neuron) or
PyTorch's CSR product of the same arrays (only the row pointers are new), whichever was measured
faster for the shape class (`itop.sparse.dispatch`, as for `SparseLinear`; `ITOP_KERNELS=numba`
forces the kernels). Everything else (autograd, other devices, `ITOP_KERNELS=torch`, numba missing)
goes through PyTorch in row chunks of bounded memory, with gradients equal to the masked dense
layer's (`condensed_ops.py`). `CondensedConv2d` lives in `condensed_conv.py`, on the shared
`CondensedWeights` of this module.

    layer = CondensedLinear.from_dense(linear, mask)     # mask: the same count on every nonzero row
    layer(x)                                             # as the masked linear layer
    layer.to_dense()                                     # back to nn.Linear, exactly
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import fresh_generator
from .condensed_ops import (
    _NO_BIAS,
    CHUNK_ELEMENTS,
    CondensedProduct,
    Prepared,
    choose,
    compute,
    index_dtype,
    kernel_indices,
    numba_serves,
    torch_products,
)
from .ops import autocast_on

__all__ = ["CondensedLinear", "CondensedWeights"]


# ----------------------------------------------------------------------------- shared
def _listed(counts: list[int]) -> str:
    shown = ", ".join(str(c) for c in counts[:6])
    return shown + (", ..." if len(counts) > 6 else "")


@torch.no_grad()
def condense(mask: Tensor, what: str, cls: str, unit: str) -> tuple[Tensor, Tensor]:
    """(rows, columns) of a 2-D mask whose nonzero rows all hold the same count k: the kept rows
    (ascending int64) and each one's active columns ((rows_kept, k), ascending int64). A one-line
    ValueError naming the counts otherwise."""
    active = mask.to(torch.bool)
    counts = active.sum(1)
    distinct = torch.unique(counts[counts > 0]).tolist()
    if len(distinct) > 1:
        raise ValueError(
            f"the mask of {what} has {len(distinct)} different fan-ins ({_listed(distinct)}): "
            f"{cls} needs the same count on every {unit} (train with structure='fan-in')"
        )
    fan_in = distinct[0] if distinct else 0
    rows = torch.nonzero(counts).squeeze(1)
    columns = torch.nonzero(active.index_select(0, rows))[:, 1].reshape(len(rows), fan_in)
    return rows, columns


def random_columns(kept: int, width: int, fan_in: int, generator: torch.Generator) -> Tensor:
    """(kept, fan_in) distinct columns of [0, width) per row, ascending, uniformly drawn (rows in
    chunks, so the draw's scores never exceed `CHUNK_ELEMENTS` per chunk)."""
    parts = []
    step = max(1, CHUNK_ELEMENTS // max(1, width))
    for start in range(0, kept, step):
        scores = torch.rand(min(step, kept - start), width, generator=generator)
        parts.append(scores.topk(fan_in, dim=1, sorted=False).indices.sort(dim=1).values)
    return torch.cat(parts) if parts else torch.zeros(0, fan_in, dtype=torch.int64)


def _check_fan_in(fan_in, width: int, cls: str) -> int:
    if not isinstance(fan_in, int) or isinstance(fan_in, bool) or not 0 <= fan_in <= width:
        raise ValueError(f"{cls}: fan_in must be an integer in [0, {width}], got {fan_in!r}.")
    return fan_in


class CondensedWeights(nn.Module):
    """What both condensed layers share: `values`, an index buffer named `_index_name`, `rows`,
    `bias`, resizing on load, and copies without derived caches."""

    _index_name = "indices"
    values: nn.Parameter
    rows: Tensor

    @property
    def fan_in(self) -> int:
        """k: the active weights of every kept output neuron."""
        return self.values.shape[1]

    @property
    def rows_kept(self) -> int:
        return self.rows.numel()

    def _width(self) -> int:
        """How many inputs each row's indices range over."""
        raise NotImplementedError

    def _hold(self, rows: Tensor, columns: Tensor, values: Tensor, bias: Tensor | None, device) -> None:
        """Register the state: `values` (rows_kept, k), `columns` (the same shape), `rows`, `bias`."""
        self.values = nn.Parameter(values.detach().to(device))
        self.register_buffer(self._index_name, columns.to(device=device, dtype=index_dtype(self._width())))
        self.register_buffer("rows", rows.to(device=device, dtype=torch.int64))
        if bias is None:
            self.register_parameter("bias", None)
        else:
            self.bias = nn.Parameter(bias.detach().to(device))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        """A saved layer may keep another number of rows or another k: take the saved sizes before
        the values are copied in (a saved index out of range is refused, one line)."""
        values, index, rows = (state_dict.get(prefix + name) for name in ("values", self._index_name, "rows"))
        if all(isinstance(t, Tensor) for t in (values, index, rows)) and values.dim() == 2 and index.shape == values.shape:
            problem = self._problem(index, rows, values)
            if problem:
                error_msgs.append(f"{type(self).__name__}: the saved {problem}.")
                return
            with torch.no_grad():
                self.values.data = torch.empty(values.shape, dtype=self.values.dtype, device=self.values.device)
                setattr(self, self._index_name, torch.empty(index.shape, dtype=index_dtype(self._width()), device=self.rows.device))
                self.rows = torch.empty(rows.shape, dtype=torch.int64, device=self.rows.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def _problem(self, index: Tensor, rows: Tensor, values: Tensor) -> str:
        """What is wrong with the rows and indices of a state (saved or given), or ''."""
        outputs = self._outputs()
        if rows.dim() != 1 or rows.numel() != values.shape[0]:
            return f"rows hold {rows.numel()} entries for {values.shape[0]} rows of values"
        if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= outputs):
            return f"rows fall outside [0, {outputs})"
        if rows.numel() > 1 and not bool((rows.diff() > 0).all()):
            return "rows are not strictly ascending"
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self._width()):
            return f"{self._index_name} fall outside [0, {self._width()})"
        if index.shape[1] > 1 and not bool((index.diff(dim=1) > 0).all()):
            return f"{self._index_name} are not strictly ascending in every row"
        return ""

    def _outputs(self) -> int:
        raise NotImplementedError

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """The dense weight's shape."""
        return (self._outputs(), self._width())

    @property
    def nnz(self) -> int:
        """Active weights: kept rows x k."""
        return self.values.numel()

    def positions(self) -> Tensor:
        """The active weights' sorted flat positions over the dense weight (int64): how `itop.save`
        stores every sparse layer, whatever class computes it."""
        index = getattr(self, self._index_name).to(torch.int64)
        return (self.rows[:, None] * self._width() + index).reshape(-1)

    def _dense_rows(self) -> Tensor:
        """The weight as an (outputs, width) matrix, zero off the active positions."""
        dense = self.values.new_zeros(self._outputs(), self._width())
        index = getattr(self, self._index_name).to(torch.int64)
        if self.values.numel():
            dense[self.rows[:, None], index] = self.values.detach()
        return dense

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_cache"] = None  # derived; rebuilt on first use
        return state


# ----------------------------------------------------------------------------- Linear
class CondensedLinear(CondensedWeights):
    """y = x W^T + b with every kept output neuron holding k active weights (see the module docstring).

    `CondensedLinear(in_features, out_features, fan_in=k)` draws k distinct inputs per neuron
    uniformly and initialises the values for the actual fan-in (nn.Linear's bound 1/sqrt(k)); the
    bias keeps nn.Linear's. `CondensedLinear.from_dense(linear, mask)` condenses a trained layer.

    Inference (grad off) on the CPU runs the numba kernels on the calling thread or over
    `torch.get_num_threads()` threads, or from 4 inputs PyTorch's CSR product, whichever was
    measured faster for the shape class (the fixed rule where nothing is measured); with autograd,
    on other devices, with `ITOP_KERNELS=torch` or without numba, a PyTorch path in row chunks of
    bounded memory whose gradients equal the masked dense layer's.

    Attributes:
        values: (rows_kept, k) active weights (the parameter).
        indices: (rows_kept, k) their input indices, ascending per row (a buffer).
        rows: (rows_kept,) the kept output neurons, ascending (a buffer); the others output the bias.

    Example:
        ```python
        layer = itop.sparse.CondensedLinear.from_dense(linear, mask)   # mask: k per nonzero row
        y = layer(torch.randn(32, linear.in_features))
        layer.to_dense()                                               # the masked nn.Linear
        ```
    """

    indices: Tensor

    def __init__(
        self,
        in_features: int,
        out_features: int,
        fan_in: int,
        bias: bool = True,
        *,
        generator: torch.Generator | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        fan_in = _check_fan_in(fan_in, self.in_features, "CondensedLinear")
        generator = generator if generator is not None else fresh_generator()
        kept = out_features if fan_in else 0
        columns = random_columns(kept, in_features, fan_in, generator)
        bound = 1.0 / math.sqrt(max(1, fan_in))
        values = torch.empty(kept, fan_in).uniform_(-bound, bound, generator=generator).to(dtype or torch.get_default_dtype())
        b = None
        if bias:
            fan = 1.0 / math.sqrt(in_features) if in_features else 0.0
            b = torch.empty(out_features).uniform_(-fan, fan, generator=generator).to(dtype or torch.get_default_dtype())
        self._hold(torch.arange(kept), columns, values, b, device)
        self._cache = None

    def _width(self) -> int:
        return self.in_features

    def _outputs(self) -> int:
        return self.out_features

    # ----------------------------------------------------------------------------- conversion
    @classmethod
    @torch.no_grad()
    def from_dense(cls, linear: nn.Linear, mask: Tensor) -> CondensedLinear:
        """The condensed layer holding `linear`'s weights where `mask` is nonzero (its bias too).
        Every nonzero row of the mask must hold the same count k; empty rows are ablated."""
        weight = linear.weight
        if tuple(mask.shape) != tuple(weight.shape):
            raise ValueError(
                f"CondensedLinear.from_dense: mask of shape {tuple(mask.shape)} does not match the weight's {tuple(weight.shape)}."
            )
        what = f"a Linear({linear.in_features}, {linear.out_features})"
        rows, columns = condense(mask.to(weight.device), what, "CondensedLinear", "neuron")
        values = weight.detach().index_select(0, rows).gather(1, columns)
        layer = cls.from_values(linear.in_features, linear.out_features, rows, columns, values, linear.bias)
        layer.values.requires_grad_(weight.requires_grad)  # a frozen layer stays frozen
        if linear.bias is not None:
            layer.bias.requires_grad_(linear.bias.requires_grad)
        return layer

    @classmethod
    def from_values(
        cls, in_features: int, out_features: int, rows: Tensor, indices: Tensor, values: Tensor, bias: Tensor | None = None
    ) -> CondensedLinear:
        """A layer holding `values` at `indices` ((rows_kept, k), ascending per row) of the kept
        `rows` (ascending), and `bias` (out_features,), as trainable parameters (copies)."""
        if values.dim() != 2 or indices.shape != values.shape or rows.shape != (values.shape[0],):
            raise ValueError(
                f"CondensedLinear: values {tuple(values.shape)}, indices {tuple(indices.shape)} and rows {tuple(rows.shape)} must be (R, k), (R, k) and (R,)."
            )
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer.in_features, layer.out_features, layer._cache = int(in_features), int(out_features), None
        layer._hold(rows, indices, values.clone(), None if bias is None else bias.clone(), values.device)
        problem = layer._problem(indices, rows, values)
        if problem:
            raise ValueError(f"CondensedLinear: {problem}.")
        return layer

    @torch.no_grad()
    def to_dense(self) -> nn.Linear:
        """An nn.Linear with these weights and zeros elsewhere (an exact round trip of `from_dense`)."""
        linear = nn.Linear(
            self.in_features, self.out_features, bias=self.bias is not None, device=self.values.device, dtype=self.values.dtype
        )
        linear.weight.copy_(self._dense_rows())
        if self.bias is not None:
            linear.bias.copy_(self.bias)
        return linear

    # ----------------------------------------------------------------------------- compute
    def forward(self, x: Tensor) -> Tensor:
        # parameters read from the module's dicts: nn.Module's attribute lookup is a few hundred
        # nanoseconds each, and at batch 1 this call's overhead is a tenth of the layer's time
        values, bias = self._parameters["values"], self._parameters["bias"]
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"CondensedLinear expects inputs of shape (..., {self.in_features}), got {tuple(x.shape)}.")
        if x.dtype != values.dtype:  # autocast and mixed inputs: the products need one dtype
            x = x.to(values.dtype)
        if autocast_on(x.device.type):  # no bfloat16/float16 kernels: run in the values' dtype
            with torch.autocast(x.device.type, enabled=False):
                return self.forward(x)
        inputs = x if x.dim() == 2 else x.reshape(-1, self.in_features)
        if torch.is_grad_enabled() and (x.requires_grad or values.requires_grad or (bias is not None and bias.requires_grad)):
            out = self._placed(CondensedProduct.apply(inputs, values, self._buffers["indices"]))
        else:
            out = self._infer(inputs, values)
        return out if x.dim() == 2 else out.reshape(*x.shape[:-1], self.out_features)

    def _infer(self, inputs: Tensor, values: Tensor) -> Tensor:
        """Inference without autograd: on the CPU numba's kernels or PyTorch's CSR product (the
        measured choice), else PyTorch's path in row chunks."""
        if inputs.shape[0] and values.numel() and numba_serves(inputs, values):
            prepared = self._prepared(values)
            if prepared is not None:
                out = compute(choose(self, inputs), self, prepared, inputs)
                if out is not None:
                    return out
        with torch.no_grad():
            return self._placed(torch_products(inputs, values, self.indices))

    def _prepared(self, values: Tensor) -> Prepared | None:
        """The numpy views and CSR matrix of this state of the layer (`Prepared`), made once and
        kept while the tensors stay in place (in-place updates show through the views); None where
        the values are not contiguous or the bias has another dtype."""
        bias, buffers = self._parameters["bias"], self._buffers
        indices, rows = buffers["indices"], buffers["rows"]
        key = (
            values.data_ptr(),
            values.shape,
            indices.data_ptr(),
            indices._version,
            rows.data_ptr(),
            None if bias is None else bias.data_ptr(),
        )
        cached = self._cache
        if cached is not None and cached[0] == key:
            return cached[1]
        if not values.is_contiguous() or (bias is not None and bias.dtype != values.dtype):
            return None
        bias_array = _NO_BIAS[values.dtype] if bias is None else bias.detach().numpy()
        arrays = (values.detach().numpy(), kernel_indices(indices, self.in_features), rows.numpy(), bias_array)
        self._cache = (key, Prepared(arrays, rows.numel() < self.out_features))
        return self._cache[1]

    def _placed(self, products: Tensor) -> Tensor:
        """The (N, out_features) output from the kept rows' (N, rows_kept) products, plus the bias."""
        if self.rows_kept < self.out_features:
            products = products.new_zeros(products.shape[0], self.out_features).index_copy(1, self.rows, products)
        return products if self.bias is None else products + self.bias

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, fan_in={self.fan_in}, "
            f"rows_kept={self.rows_kept}/{self.out_features}, bias={self.bias is not None}"
        )
