"""Structured dynamic sparsity: constant fan-in (SRigL) and N:M masks on the masked engine.

A layer's weight of shape (out, ...) is read as `out` rows (neurons, or output channels over
in x kh x kw) of `fan_in` positions each, and cut into blocks:

- `"fan-in"` (Lasby et al. 2024, "Dynamic Sparse Training with Structured Sparsity", SRigL): a
  block is a row, and every row holds the same number k of active weights. The distribution's
  per-layer density is rounded to a whole k. With `ablation`, SRigL's neuron ablation: at each
  update a row whose salient weights (those that survive the magnitude prune, plus the layer's
  best growth candidates, as many as were pruned) number fewer than `ablation_threshold` x k
  loses all its weights, and the layer's budget (its initial count) is shared by the rows left:
  k' = budget // rows left, so the layer's count stays within one weight per row of its budget.
- `"N:M"` (e.g. "2:4"): a block is M consecutive positions of a row, and holds exactly N active
  weights; every structured layer's density is N/M. Rows whose length is not a multiple of M are
  refused.

An update prunes with the layer's prune criterion over the whole layer, as without structure;
then each block regrows what it needs to be whole again (its quota), choosing by the grow
criterion's scores within the block: first among its positions inactive before the update, then,
only if those run short, among the weights this update pruned (grown back at zero). So the
structure holds exactly after every update, whatever the prune criterion removed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import Tensor

from .select import top_k_mask

FAN_IN = "fan-in"
ABLATION_THRESHOLD = 0.3  # SRigL's gamma_sal: the share of k a neuron's salient weights must reach


@dataclass(frozen=True)
class Structure:
    """A parsed `structure=` argument: the kind, N and M for N:M, and the ablation settings."""

    kind: str  # "fan-in" or "N:M"
    n: int = 0
    m: int = 0
    ablation: bool = False
    ablation_threshold: float = ABLATION_THRESHOLD

    @property
    def name(self) -> str:
        """How the structure is written: "fan-in" or "2:4"."""
        return FAN_IN if self.kind == FAN_IN else f"{self.n}:{self.m}"

    @property
    def label(self) -> str:
        """The structure in tables and logs: "fan-in", "fan-in+ablation" or "2:4"."""
        return f"{self.name}+ablation" if self.ablation else self.name

    def density(self, density: float | None) -> float:
        """The global density to use: N/M for N:M (a different `density` refused), else `density` or 0.05."""
        if self.kind == FAN_IN:
            return 0.05 if density is None else density
        if density is not None and not math.isclose(float(density), self.n / self.m, rel_tol=1e-9):
            raise ValueError(
                f"structure={self.name!r} sets the density of every sparse layer to {self.n}/{self.m}, but density={density!r} was "
                "given; leave density out (or pass the same value)."
            )
        return self.n / self.m

    def cuts(self, shape: tuple[int, ...]) -> bool:
        """Can a weight of this shape take the structure (fan-in always; N:M rows a multiple of M)?"""
        return self.kind == FAN_IN or _fan_in(shape) % self.m == 0

    def check_layer(self, name: str, shape: tuple[int, ...]) -> None:
        """Refuse a layer whose rows cannot be cut into blocks of M (one line naming it)."""
        fan_in = _fan_in(shape)
        if not self.cuts(shape):
            raise ValueError(
                f"structure={self.name!r} needs rows whose length is a multiple of {self.m}, but {name} (shape {tuple(shape)}) has "
                f"rows of {fan_in} inputs; leave it dense with exclude=[{name!r}] or choose another M."
            )

    def block_size(self, shape: tuple[int, ...]) -> int:
        return _fan_in(shape) if self.kind == FAN_IN else self.m

    def initial_count(self, shape: tuple[int, ...], count: int) -> int:
        """The layer's active count under the structure: `count` rounded to a whole fan-in (at least
        one weight per row), or N of every M."""
        rows, fan_in = shape[0], _fan_in(shape)
        if self.kind == FAN_IN:
            return rows * min(fan_in, max(1, round(count / rows)))
        return rows * fan_in // self.m * self.n

    def initial_mask(self, shape: tuple[int, ...], count: int, generator: torch.Generator, device) -> Tensor:
        """A random mask with the structure and `initial_count(shape, count)` active weights:
        each block draws its positions uniformly (one random score per position, from `generator`)."""
        size = self.block_size(shape)
        blocks = math.prod(shape) // size
        scores = torch.rand((blocks, size), generator=generator)
        quota = torch.full((blocks,), self.initial_count(shape, count) // blocks, dtype=torch.long)
        return top_in_blocks(scores, torch.ones(blocks, size, dtype=torch.bool), quota).reshape(shape).to(device)

    def check(self, name: str, mask: Tensor, budget: int) -> None:
        """RuntimeError if `mask` lost the structure (a bug, never a user's mistake)."""
        counts = _blocks(mask, self.block_size(tuple(mask.shape))).sum(1)
        if self.kind == FAN_IN:
            held = counts[counts > 0].unique()
            if held.numel() > 1 or int(counts.sum()) > budget:
                raise RuntimeError(f"{name} lost its constant fan-in: its rows hold {held.tolist()} active weights.")
        elif bool((counts != self.n).any()):
            raise RuntimeError(f"{name} lost its {self.name} structure.")

    def stats(self, mask: Tensor) -> dict:
        """What `layer_stats` adds: the structure, and for fan-in the fan-in and ablated rows."""
        if self.kind != FAN_IN:
            return {"structure": self.name}
        counts = _blocks(mask, self.block_size(tuple(mask.shape))).sum(1)
        active = counts[counts > 0]
        return {"structure": self.name, "fan_in": int(active[0]) if active.numel() else 0, "ablated": int((counts == 0).sum())}

    def quotas(self, kept: Tensor, active: Tensor, scores: Tensor, weight: Tensor, budget: int) -> tuple[Tensor, Tensor]:
        """(kept, quota): the survivors (after SRigL's ablation, if on) and how many each block regrows."""
        size = self.block_size(tuple(kept.shape))
        kept_blocks = _blocks(kept, size)
        if self.kind != FAN_IN:
            return kept, self.n - kept_blocks.sum(1)
        rows = kept_blocks.shape[0]
        if not self.ablation:
            return kept, budget // rows - kept_blocks.sum(1)
        return self._ablate(kept, active, scores, weight, budget)

    def _ablate(self, kept: Tensor, active: Tensor, scores: Tensor, weight: Tensor, budget: int) -> tuple[Tensor, Tensor]:
        """SRigL's neuron ablation, then the quota that brings every remaining row to k'."""
        shape = tuple(kept.shape)
        fan_in = _fan_in(shape)
        kept_rows, active_rows = _blocks(kept, fan_in), _blocks(active, fan_in)
        rows = kept_rows.shape[0]
        held = active_rows.sum(1)
        k = int(held[held > 0][0]) if bool((held > 0).any()) else budget // rows
        pruned = int(active_rows.sum()) - int(kept_rows.sum())
        candidates = ~active.reshape(-1)
        best = torch.zeros_like(candidates)
        if pruned:  # the growth candidates the layer would take: salient too
            best = top_k_mask(scores.reshape(-1), pruned, candidates)
        salient = (kept_rows | best.reshape(rows, fan_in)).sum(1)
        alive = salient >= self.ablation_threshold * k
        least = max(1, math.ceil(budget / fan_in))  # rows needed to hold the budget at most fan_in each
        if int(alive.sum()) < least:  # revive the most salient rows (ties to the lowest index)
            order = torch.sort(salient.float() + alive.float() * (fan_in + 1), descending=True, stable=True).indices
            alive = torch.zeros_like(alive)
            alive[order[:least]] = True
        k_new = min(fan_in, budget // int(alive.sum()))
        kept_rows = kept_rows & alive[:, None]
        too_many = kept_rows.sum(1) > k_new  # a revived layer's rows may hold more than the new k
        if bool(too_many.any()):
            keep = torch.where(too_many, torch.full_like(held, k_new), kept_rows.sum(1))
            kept_rows = top_in_blocks(_blocks(weight.abs(), fan_in), kept_rows, keep)
        quota = torch.where(alive, k_new - kept_rows.sum(1), torch.zeros_like(held))
        return kept_rows.reshape(shape), quota

    def grow(self, kept: Tensor, active: Tensor, quota: Tensor, scores: Tensor) -> Tensor:
        """The positions each block grows: `quota` per block by `scores`, first among the positions
        inactive before the update, then among those this update pruned."""
        size = self.block_size(tuple(kept.shape))
        fresh, pruned = _blocks(~active, size), _blocks(active & ~kept, size)
        block_scores = _blocks(scores, size)
        first = torch.minimum(quota, fresh.sum(1))
        grown = top_in_blocks(block_scores, fresh, first)
        rest = quota - first
        if bool((rest > 0).any()):
            if bool((rest > pruned.sum(1)).any()):
                raise RuntimeError("a block has no room for the weights it must regrow.")
            grown |= top_in_blocks(block_scores, pruned, rest)
        return grown.reshape(kept.shape)


def check_usable(structure: Structure | None, storages: dict, grow, per_layer: bool, config: dict) -> None:
    """Refuse, in one line, what structure cannot work with: truly sparse layers, growth that is
    redistributed across layers or absent, a grow criterion without scores, and layers whose rows
    N:M cannot cut."""
    if structure is None:
        return
    truly = [n for n, s in storages.items() if s.truly_sparse]
    if truly:
        raise ValueError(
            f"structure={structure.name!r} works on masked layers, but {truly[0]} is an itop.sparse layer; train the model with "
            "nn.Linear / nn.Conv2d layers (export it afterwards for fast inference)."
        )
    if not per_layer:
        raise ValueError(
            f"structure={structure.name!r} fixes every layer's count, so growth cannot be redistributed across layers; "
            f"use redistribution='none' (got {config['redistribution']!r})."
        )
    if getattr(grow, "scores", None) is None:
        raise ValueError(
            f"structure={structure.name!r} regrows each row or group to its count, which needs a grow criterion with scores "
            f"('random', 'gradient' or 'momentum'), got grow={config['grow']!r}."
        )
    for name, storage in storages.items():
        structure.check_layer(name, storage.shape)


_PATTERN = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def parse(value, ablation: bool = False, ablation_threshold: float = ABLATION_THRESHOLD) -> Structure | None:
    """`structure=` as given (None, "fan-in", "N:M") -> a Structure, or a one-line ValueError."""
    if value is None:
        if ablation:
            raise ValueError("ablation=True is SRigL's neuron ablation for structure='fan-in'; pass structure='fan-in' with it.")
        return None
    if isinstance(value, Structure):
        return value
    text = str(value).strip().lower()
    if text in ("fan-in", "fanin", "fan_in", "constant-fan-in"):
        if not 0 < ablation_threshold <= 1:
            raise ValueError(f"ablation_threshold must be in (0, 1] (SRigL's default {ABLATION_THRESHOLD}), got {ablation_threshold!r}.")
        return Structure(FAN_IN, ablation=bool(ablation), ablation_threshold=float(ablation_threshold))
    found = _PATTERN.match(text)
    if found is None or not 0 < int(found[1]) < int(found[2]):
        raise ValueError(f"structure must be None, 'fan-in' or 'N:M' with 0 < N < M (for example '2:4'), got {value!r}.")
    if ablation:
        raise ValueError("ablation=True works with structure='fan-in' only (SRigL's neuron ablation); N:M keeps every row.")
    return Structure("N:M", n=int(found[1]), m=int(found[2]))


def _fan_in(shape: tuple[int, ...]) -> int:
    return math.prod(shape[1:]) if len(shape) > 1 else 1


def _blocks(tensor: Tensor, size: int) -> Tensor:
    """`tensor` as (number of blocks, size): its rows, or M-wide pieces of its rows."""
    return tensor.reshape(-1, size)


def top_in_blocks(scores: Tensor, allowed: Tensor, counts: Tensor) -> Tensor:
    """(blocks, size) bool: in each block, its `counts[i]` allowed positions of largest score.

    Ties go to the lowest index (a stable sort); NaN scores rank lowest among the allowed, and
    a position not allowed is never chosen (`counts` must not exceed a block's allowed count).
    """
    big = torch.finfo(torch.float32).max
    finite = torch.nan_to_num(scores.float(), nan=-big, posinf=big, neginf=-big)
    ranked = torch.where(allowed, finite, torch.full_like(finite, float("-inf")))
    order = torch.sort(ranked, dim=1, descending=True, stable=True).indices
    take = torch.arange(scores.shape[1], device=scores.device)[None, :] < counts.to(scores.device)[:, None]
    chosen = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    chosen.scatter_(1, order, take)
    return chosen & allowed
