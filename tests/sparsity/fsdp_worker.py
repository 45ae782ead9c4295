"""Run by tests/sparsity/test_fsdp.py under torchrun: a Sparsifier on a model sharded by FSDP2.

    torchrun --standalone --nproc_per_node N fsdp_worker.py OUT MODE[,MODE...]

MODE `select`: the sharded selections (`shards.top_k`, `shards.random_k`) against `select` on the
whole tensor, over ties, NaN, -0.0, empty shards and every branch of the random draw.
MODE `train`: every criterion pair of SCENARIOS for STEPS steps; each rank trains on its part of
every global batch and writes the full masks, weights, Rs and history to OUT/<scenario>-<ranks>.pt (rank 0),
plus checks that the inactive weights and optimizer state are exactly zero on every shard.
MODE `amp`: RigL through a GradScaler with one step skipped (`train_with_skipped_step`).
MODE `refusals`: FSDP1, another layout, an optimizer built before sharding, truly sparse layers,
export of a sharded model, structure on shards: one-line errors; ranks seeded apart: a loud error.
MODE `save`: RigL for 6 steps, then a DCP checkpoint (model, optimizer, sparsifier) in OUT/dcp.
MODE `resume`: loads OUT/dcp (saved on any number of ranks) and trains steps 7..STEPS;
`resume-plain` does so in one process (python fsdp_worker.py OUT resume-plain), unsharded.
`train` below is also called in one process, unsharded, for comparison.
"""

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

import itop
from itop.sparsity import select, shards

CLASSES, PER_RANK, STEPS, FEATURES = 5, 4, 12, 3 * 6 * 6
SCENARIOS = {
    "set": dict(prune="set", grow="random"),
    "set-itop": dict(prune="magnitude", grow="random"),
    "rigl": dict(prune="magnitude", grow="gradient"),
    "momentum": dict(prune="magnitude", grow="momentum", redistribution="nonzeros"),
    "gmp": dict(prune="magnitude", grow="none", initial_density=1.0, prune_end=9),
    "granet": dict(prune="magnitude", grow="gradient", initial_density=1.0, prune_end=9),
}
FOUR_RANKS = ("set", "rigl", "granet")  # the 4-rank launch (2 cores) trains these; 2 ranks train every scenario


def build(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Unflatten(1, (3, 6, 6)),
        nn.Conv2d(3, 6, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 4 * 4, 33),
        nn.ReLU(),
        nn.Linear(33, CLASSES),
    )


def shard(model, world):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (world,))
    for layer in model:
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def global_batches(steps):
    gen = torch.Generator().manual_seed(1)
    world = 4  # batches sized for up to 4 ranks, whatever the run's
    size = PER_RANK * world
    return [(torch.randn(size, FEATURES, generator=gen), torch.randint(0, CLASSES, (size,), generator=gen)) for _ in range(steps)]


def make(scenario, rank=0, world=1, sharded=False):
    model = build()
    if sharded:
        shard(model, world)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sp = itop.Sparsifier(model, opt, density=0.2, update_frequency=3, total_steps=STEPS, seed=7, **SCENARIOS[scenario])
    return model, opt, sp


def run_steps(model, opt, sp, batches, rank=0, world=1):
    per = len(batches[0][0]) // world
    for x, y in batches:
        x, y = x[rank * per : (rank + 1) * per], y[rank * per : (rank + 1) * per]
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        sp.step()


def train_with_skipped_step(rank=0, world=1, sharded=False, skipped=4):
    """RigL driven through a GradScaler (ShardedGradScaler under FSDP2) whose step `skipped` finds an
    infinite gradient on the last rank's shard only: every rank must skip it, and the Sparsifier count
    no step."""
    from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

    model, opt, sp = make("rigl", rank, world, sharded)
    scaler = ShardedGradScaler("cpu", init_scale=2.0**4) if sharded else torch.amp.GradScaler("cpu", init_scale=2.0**4)
    per = len(global_batches(1)[0][0]) // world
    for step, (x, y) in enumerate(global_batches(STEPS + 1)):
        x, y = x[rank * per : (rank + 1) * per], y[rank * per : (rank + 1) * per]
        opt.zero_grad()
        scaler.scale(nn.functional.cross_entropy(model(x), y)).backward()
        if step == skipped and rank == world - 1:
            shards.local(model[-1].weight.grad).view(-1)[-1] = float("inf")
        scaler.step(opt)
        scaler.update()
        sp.step()
    assert sp.steps == STEPS, sp.steps
    return summary(model, sp)


def refusals(world):
    """The one-line errors of configurations the engine cannot follow."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.distributed.tensor import Shard, distribute_tensor

    def refused(build):
        try:
            build()
        except ValueError as error:
            assert "\n" not in str(error)
            return str(error)
        raise AssertionError("not refused")

    model = FullyShardedDataParallel(build(), device_id=torch.device("cpu"))
    assert "FSDP2" in refused(lambda: itop.Sparsifier(model, torch.optim.SGD(model.parameters(), lr=0.1)))
    model = build()
    model[-1].weight = nn.Parameter(distribute_tensor(model[-1].weight.detach(), init_device_mesh("cpu", (world,)), [Shard(1)]))
    assert "FSDP2's layout" in refused(lambda: itop.Sparsifier(model, torch.optim.SGD(model.parameters(), lr=0.1)))
    model = build()
    early = torch.optim.SGD(model.parameters(), lr=0.1)
    shard(model, world)
    assert "after fully_shard" in refused(lambda: itop.Sparsifier(model, early))
    sharded = shard(build(), world)
    sp = itop.Sparsifier(sharded, torch.optim.SGD(sharded.parameters(), lr=0.1), density=0.2)
    assert "whole weights" in refused(lambda: itop.sparse.export(sharded, sp))
    truly = itop.sparse.sparsify(build(), 0.2, seed=0)
    shard(truly, world)
    assert "positions" in refused(lambda: itop.Sparsifier(truly, torch.optim.SGD(truly.parameters(), lr=0.1)))
    try:  # ranks whose update generators differ would take different decisions on their shards
        apart = shard(build(), world)
        itop.Sparsifier(apart, torch.optim.SGD(apart.parameters(), lr=0.1), seed=dist.get_rank())
        raise AssertionError("generators that differ across ranks were not noticed")
    except RuntimeError as error:
        assert "random generator" in str(error)
    other = shard(build(), world)
    assert "not supported" in refused(lambda: itop.Sparsifier(other, torch.optim.SGD(other.parameters(), lr=0.1), structure="fan-in"))


def full(tensor):
    return tensor.full_tensor() if shards.is_sharded(tensor) else tensor.detach().clone()


def summary(model, sp):
    return {
        "masks": {n: full(m) for n, m in sp.masks.items()},
        "model": {k: full(v) for k, v in model.state_dict().items()},
        "itop_rate": sp.itop_rate,
        "density": sp.density,
        "history": [h["nnz"] for h in sp.history],
    }


def train(scenario, rank=0, world=1, sharded=False, steps=STEPS):
    model, opt, sp = make(scenario, rank, world, sharded)
    run_steps(model, opt, sp, global_batches(steps), rank, world)
    return summary(model, sp), (model, opt, sp)


def check_zeros(model, opt, sp):
    for name, param in sp.params.items():
        mask = shards.local(sp.masks[name])
        assert not shards.local(param).detach()[~mask].any(), name
        for value in opt.state[param].values():
            if isinstance(value, torch.Tensor) and value.shape == param.shape:
                assert not shards.local(value)[~mask].any(), name


def check_selections(world):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))
    gen = torch.Generator().manual_seed(3)
    shapes = [(7, 10), (3, 5), (33, 4, 3), (1, 8), (64, 64)]
    for trial in range(40):
        shape = shapes[trial % len(shapes)]
        scores = torch.randint(-3, 4, shape, generator=gen).float() if trial % 2 else torch.randn(shape, generator=gen)
        scores.view(-1)[::7] = float("nan") if trial % 3 == 0 else -0.0
        allowed = torch.rand(shape, generator=gen) < [0.1, 0.5, 0.9, 1.0][trial % 4]
        n_allowed = int(allowed.sum())
        sharded_scores = distribute_tensor(scores, mesh, [Shard(0)])
        sharded_allowed = distribute_tensor(allowed, mesh, [Shard(0)])
        for k in sorted({0, 1, n_allowed // 3, n_allowed // 2 + 1, n_allowed}):
            if k > n_allowed:
                continue
            expected = select.top_k_mask(scores, k, allowed)
            assert torch.equal(select.top_k_mask(sharded_scores, k, sharded_allowed).full_tensor(), expected), (trial, k)
            expected = select.bottom_k_mask(scores, k)
            assert torch.equal(select.bottom_k_mask(sharded_scores, k).full_tensor(), expected), (trial, k)
            seed = int(torch.randint(1 << 30, (1,), generator=gen))
            one, many = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
            expected = select.random_k_mask(allowed, k, one)
            assert torch.equal(select.random_k_mask(sharded_allowed, k, many).full_tensor(), expected), (trial, k)
            assert torch.equal(one.get_state(), many.get_state())


def save(out, rank, world):
    import torch.distributed.checkpoint as dcp

    model, opt, sp = make("rigl", rank, world, sharded=True)
    batches = global_batches(STEPS)
    run_steps(model, opt, sp, batches[:6], rank, world)
    dcp.save(itop.sharded_state(model, opt, sp), checkpoint_id=str(out / "dcp"))


def resume(out, rank, world, sharded):
    model, opt, sp = make("rigl", rank, world, sharded=sharded)
    itop.load_sharded_state(model, opt, sp, str(out / "dcp"))
    run_steps(model, opt, sp, global_batches(STEPS)[6:], rank, world)
    return summary(model, sp)


def main():
    out, modes = Path(sys.argv[1]), sys.argv[2].split(",")
    if modes == ["resume-plain"]:  # one process, no FSDP, no process group
        torch.save(resume(out, 0, 1, sharded=False), out / "resumed-plain.pt")
        return
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    for mode in modes:  # one launch runs several modes: each torchrun start costs seconds
        run_mode(mode, out, rank, world)
    dist.barrier()  # every rank done: the files are written
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip gloo's teardown, which aborts now and then (see itop.train.cli._end_process)


def run_mode(mode, out, rank, world):
    if mode == "select":
        check_selections(world)
    elif mode == "train":
        for scenario in SCENARIOS if world <= 2 else FOUR_RANKS:
            result, (model, opt, sp) = train(scenario, rank, world, sharded=True)
            check_zeros(model, opt, sp)
            if rank == 0:
                torch.save(result, out / f"{scenario}-{world}.pt")
    elif mode == "amp":
        result = train_with_skipped_step(rank, world, sharded=True)
        if rank == 0:
            torch.save(result, out / "amp.pt")
    elif mode == "refusals":
        refusals(world)
    elif mode == "save":
        save(out, rank, world)
    elif mode == "resume":
        result = resume(out, rank, world, sharded=True)
        if rank == 0:
            torch.save(result, out / f"resumed{world}.pt")
    else:
        raise ValueError(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
