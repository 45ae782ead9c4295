"""One rank of a 2-process torchrun job: SparsityCallback under Lightning's ModelParallelStrategy
(FSDP2: `fully_shard` in `configure_model`), on gloo and the CPU, or on GPUs with nccl
(DEVICE=gpu in the environment).

    python -m torch.distributed.run --standalone --nproc_per_node 2 lightning_fsdp_worker.py OUT train|resume

train: every scenario fits 2 epochs, saving a checkpoint after the first (ModelCheckpoint): a
distributed checkpoint (a directory), or one file (save_distributed_checkpoint=False).
resume: every scenario fits again from that checkpoint to the end; RigL once more for 3 epochs
instead of 2; then a tensor-parallel layout, which the engine must refuse when fitting begins.

Each rank writes OUT/<mode>-rank<r>.pt, by scenario: its own shards of the sparse state when the
checkpoint was saved (train) or when training restarted (resume), and the full masks, weights and
figures at the end, plus whether the inactive weights and momentum are exactly zero on its shards.
"""

import os
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from itop.integrations.lightning import SparsityCallback
from itop.sparsity import shards

SCENARIOS = {
    "set-dcp": (dict(prune="set", grow="random"), True),
    "rigl-dcp": (dict(prune="magnitude", grow="gradient"), True),
    "rigl-file": (dict(prune="magnitude", grow="gradient"), False),
}
EPOCHS, STEPS_PER_EPOCH = 2, 8  # 64 examples / 2 ranks / batch 4


class Sharded(pl.LightningModule):
    """An MLP on 16 features, sharded by FSDP2 layer by layer (or, `tensor_parallel`, by rows and columns)."""

    def __init__(self, tensor_parallel=False):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3))
        self.tensor_parallel = tensor_parallel

    def configure_model(self):
        from torch.distributed.fsdp import fully_shard

        if self.tensor_parallel:
            from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

            parallelize_module(self.net, self.device_mesh["tensor_parallel"], {"0": ColwiseParallel(), "2": RowwiseParallel()})
            return
        mesh = self.device_mesh["data_parallel"]
        for layer in self.net:
            if isinstance(layer, nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(self.net, mesh=mesh)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)


class Recorder(pl.Callback):
    """This rank's shards of the sparse state when a checkpoint is first saved and when training starts."""

    def __init__(self, cb):
        self.cb, self.at_save, self.at_start = cb, None, None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        if self.at_save is None:
            self.at_save = local_state(self.cb.sparsifier)

    def on_train_start(self, trainer, pl_module):
        self.at_start = local_state(self.cb.sparsifier)


def local_state(sp):
    state = sp.state_dict()
    return {
        "masks": {n: shards.local(m).cpu().clone() for n, m in state["masks"].items()},
        "explored": {n: shards.local(m).cpu().clone() for n, m in state["explored"].items()},
        "steps": state["steps"],
        "seed": state["seed"],
        "generator": state["generator"].clone(),
        "history": [h["step"] for h in state["history"]],
        "itop_rate": sp.itop_rate,
    }


def loader(n=64):
    g = torch.Generator().manual_seed(1)
    return DataLoader(TensorDataset(torch.randn(n, 16, generator=g), torch.randint(0, 3, (n,), generator=g)), batch_size=4)


def trainer(out, callbacks, distributed=True, data_parallel=2, **changes):
    strategy = ModelParallelStrategy(
        data_parallel_size=data_parallel, tensor_parallel_size=2 // data_parallel, save_distributed_checkpoint=distributed
    )
    gpu = os.environ.get("DEVICE") == "gpu"
    settings = dict(
        accelerator="gpu" if gpu else "cpu",
        devices=2,
        strategy=strategy,
        max_epochs=EPOCHS,
        precision="32-true",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(out),
        deterministic=not gpu,  # on GPUs cuBLAS would need a workspace setting
    )
    return pl.Trainer(callbacks=callbacks, **{**settings, **changes})


def zeros_hold(cb, module):
    """Inactive weights and their momentum are exactly zero on this rank's shards; and some are inactive."""
    sp, checked = cb.sparsifier, 0
    for name, param in module.named_parameters():
        if name not in sp.masks:
            continue
        inactive = ~shards.local(sp.masks[name])
        if not inactive.any():
            continue
        if shards.local(param.detach())[inactive].any():
            return False
        if shards.local(sp.optimizer.state[param]["momentum_buffer"])[inactive].any():
            return False
        checked += 1
    return checked > 0


def final(cb, module):
    full = {n: m.full_tensor().cpu() for n, m in cb.sparsifier.masks.items()}
    return {
        "masks": full,
        "weights": {n: p.detach().full_tensor().cpu() for n, p in module.named_parameters()},
        "itop_rate": cb.sparsifier.itop_rate,
        "density": cb.sparsifier.density,
        "steps": cb.sparsifier.steps,
        "history": [h["step"] for h in cb.sparsifier.history],
        "zeros": zeros_hold(cb, module),
        "sharded": all(shards.is_sharded(m) for m in cb.sparsifier.masks.values()),
    }


def fit(out, scenario, mode):
    options, distributed = SCENARIOS[scenario]
    cb = SparsityCallback(density=0.2, update_frequency=4, seed=0, **options)
    recorder, module = Recorder(cb), Sharded()
    if mode == "train":
        saving = ModelCheckpoint(dirpath=out / scenario, every_n_epochs=1, save_top_k=-1, filename="{epoch}")
        trainer(out, [cb, recorder, saving], distributed, enable_checkpointing=True).fit(module, loader())
        result = {"at_save": recorder.at_save}
    else:
        trainer(out, [cb, recorder], distributed).fit(module, loader(), ckpt_path=str(out / scenario / "epoch=0.ckpt"))
        result = {"at_start": recorder.at_start}
    return {**result, "final": final(cb, module)}


def longer(out):
    """RigL resumed from its distributed checkpoint for 3 epochs instead of 2 (the prune-rate decay stretched)."""
    options, _ = SCENARIOS["rigl-dcp"]
    cb, module = SparsityCallback(density=0.2, update_frequency=4, seed=0, **options), Sharded()
    trainer(out, [cb], max_epochs=3).fit(module, loader(), ckpt_path=str(out / "rigl-dcp" / "epoch=0.ckpt"))
    sp = cb.sparsifier
    return {
        "steps": sp.steps,
        "history": [h["step"] for h in sp.history],
        "total_steps": sp.config["total_steps"],
        "zeros": zeros_hold(cb, module),
    }


def tensor_parallel(out):
    """A tensor-parallel layout (rows and columns on a 1-D mesh): the engine's one-line ValueError."""
    cb = SparsityCallback(density=0.2, seed=0)
    try:
        trainer(out, [cb], data_parallel=1).fit(Sharded(tensor_parallel=True), loader())
    except ValueError as error:
        return str(error)
    return None


def main() -> None:
    out, mode = Path(sys.argv[1]), sys.argv[2]
    results = {scenario: fit(out, scenario, mode) for scenario in SCENARIOS}
    if mode == "resume":
        results["longer"] = longer(out)
        results["tensor-parallel"] = tensor_parallel(out)
    rank = dist.get_rank()
    torch.save(results, out / f"{mode}-rank{rank}.pt")
    dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # past the last barrier: skip gloo's teardown, which aborts now and then


if __name__ == "__main__":
    main()
