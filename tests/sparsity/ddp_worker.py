"""Run by tests/sparsity/test_distributed.py under torchrun: DDP training with a Sparsifier.

    torchrun --standalone --nproc_per_node 2 ddp_worker.py OUT STEPS SCENARIO [SCENARIO ...] [--bad-seed]

A scenario is GROW (random, gradient, momentum) or GROW:KIND, trained one after the other in one
launch. KIND `wide` trains a model whose first layer (1000 x 600, density 0.05, 200 rows per rank)
takes the sparse Linear kernels; `truly` a small CNN whose Conv2d and Linear layers are truly sparse
(itop.sparse.sparsify: SparseConv2d, SparseLinear); `fan-in+ablation` or `2:4` a structured run;
`gradual` gradual pruning (GMP with grow none, GraNet with gradient).

Each rank trains on its half of every global batch and saves its masks, weights and Rs to
OUT/<scenario>/rank<r>.pt (":" written "_"). `train` is also called in one process with the whole
batch, for comparison.
"""

import os
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import itop

CLASSES, PER_RANK = 5, 8


def build(features, hidden, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, 32), nn.ReLU(), nn.Linear(32, CLASSES))


def build_cnn(features, seed=0):
    """Two convolutions (one strided) before the Linear layers: the truly sparse run then holds
    SparseConv2d layers too. Each input of `features` = 20 values is a 1 x 4 x 5 image."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Unflatten(1, (1, 4, 5)),
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 12, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(12 * 2 * 3, 32),
        nn.ReLU(),
        nn.Linear(32, CLASSES),
    )


def global_batches(steps, size, features):
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(size, features, generator=gen), torch.randint(0, CLASSES, (size,), generator=gen)) for _ in range(steps)]


def train(grow, steps, rank=0, world=1, sparsifier_seed=7, wide=False, truly=False, structure=None, gradual=False):
    features, hidden, density, per_rank = (1000, 600, 0.05, 200) if wide else (20, 32, 0.2, PER_RANK)
    shape = {}
    if structure:
        kind, _, ablation = structure.partition("+")
        shape = dict(structure=kind, ablation=bool(ablation))
        density = None if ":" in kind else density
    if gradual:  # GMP (grow "none") or GraNet, dense to `density` by two thirds of the run
        shape = dict(initial_density=1.0, prune_end=2 * steps // 3)
    model = build_cnn(features) if truly else build(features, hidden)
    if truly:
        itop.sparse.sparsify(model, density, seed=sparsifier_seed)
    forward = DistributedDataParallel(model) if world > 1 else model
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sp = itop.Sparsifier(
        model,
        opt,
        density=density,
        distribution="uniform" if wide else "erk",
        grow=grow,
        update_frequency=3,
        total_steps=steps,
        seed=sparsifier_seed,
        **shape,
    )
    first = sp.layer_stats()["1.weight" if truly else "0.weight"]
    assert first["sparse_kernel"] == wide and first["truly_sparse"] == truly
    for x, y in global_batches(steps, per_rank * 2, features):
        part = slice(rank * len(x) // world, (rank + 1) * len(x) // world)
        opt.zero_grad()
        nn.functional.cross_entropy(forward(x[part]), y[part]).backward()
        opt.step()
        sp.step()
    masks = {**sp.masks, **{n: layer.indices for n, layer in sp.layers.items()}}  # positions for truly sparse layers
    return {"masks": masks, "model": model.state_dict(), "itop_rate": sp.itop_rate, "density": sp.density}


def scenario_options(scenario: str) -> dict:
    """`train`'s options for a scenario "GROW" or "GROW:KIND" (KIND: wide, truly, gradual, or a
    structure such as fan-in+ablation or 2:4)."""
    grow, _, kind = scenario.partition(":")
    options = {"grow": grow}
    if kind in ("wide", "truly", "gradual"):
        options[kind] = True
    elif kind:
        options["structure"] = kind
    return options


if __name__ == "__main__":
    # ddp_worker.py OUT STEPS SCENARIO [SCENARIO ...] [--bad-seed]: each scenario's result in OUT/<scenario>/rank<r>.pt
    out, steps = sys.argv[1], int(sys.argv[2])
    scenarios = [a for a in sys.argv[3:] if not a.startswith("--")]
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    seed = 7 + rank if "--bad-seed" in sys.argv else 7
    for scenario in scenarios:
        result = train(steps=steps, rank=rank, world=world, sparsifier_seed=seed, **scenario_options(scenario))
        folder = os.path.join(out, scenario.replace(":", "_"))
        os.makedirs(folder, exist_ok=True)
        torch.save(result, os.path.join(folder, f"rank{rank}.pt"))
    dist.barrier()  # both ranks done: the files are written
    os._exit(0)  # skip gloo's teardown, which aborts now and then (see itop.train.cli._end_process)
