"""One rank of a 2-process torchrun job training with SparsityCallback in the Hugging Face Trainer or
Lightning (DDP on gloo); each rank saves its masks, Rs and weights to <out>/rank<r>.pt.

    python -m torch.distributed.run --standalone --nproc_per_node 2 ddp_worker.py huggingface|lightning OUT

The callback gets no seed: rank 0's is shared, so the masks agree only if the engine shares it.
"""

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist


def huggingface(out: Path):
    from test_huggingface import arguments, examples, tiny_bert
    from transformers import Trainer

    from itop.integrations.huggingface import SparsityCallback

    cb = SparsityCallback(density=0.2, grow="gradient", update_frequency=2)
    trainer = Trainer(
        model=tiny_bert(), args=arguments(out, bf16=False, max_steps=8, ddp_backend="gloo"), train_dataset=examples(), callbacks=[cb]
    )
    trainer.train()
    return cb.sparsifier, trainer.model


def lightning(out: Path):
    from test_lightning import Classifier, loader, trainer

    from itop.integrations.lightning import SparsityCallback

    cb, module = SparsityCallback(density=0.2, grow="gradient", update_frequency=2), Classifier()
    trainer(out, [cb], devices=2, strategy="ddp", precision="32-true", max_epochs=1).fit(module, loader())
    return cb.sparsifier, module


def main() -> None:
    kind, out = sys.argv[1], Path(sys.argv[2])
    sys.path.insert(0, str(Path(__file__).parent))
    sparsifier, model = {"huggingface": huggingface, "lightning": lightning}[kind](out)
    rank = dist.get_rank()
    torch.save(
        {
            "masks": sparsifier.masks,
            "itop_rate": sparsifier.itop_rate,
            "steps": sparsifier.steps,
            "seed": sparsifier.seed,
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        },
        out / f"rank{rank}.pt",
    )
    dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # past the last barrier: skip gloo's teardown, which aborts now and then (see itop.train.cli)


if __name__ == "__main__":
    main()
