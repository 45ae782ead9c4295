"""Tiny run directories in the format `itop train` writes, for report tests."""

import json
from pathlib import Path

LAYERS = ("fc1.weight", "fc2.weight", "fc3.weight")


def summary(method, density, test_acc, itop_rate, training, test, **extra):
    return {
        "method": method,
        "model": "lenet300",
        "data": "mnist",
        "density": density,
        "sparsity": round(1 - density, 6),
        "test_acc": test_acc,
        "best_val_acc": test_acc,
        "itop_rate": itop_rate,
        "training_flops": training,
        "test_flops": test,
        "dense_training_flops": 3.2e18,
        "dense_test_flops": 8.2e9,
        "epochs": 2,
        "multiplier": 1,
        "steps": 200,
        "seconds": 3.0,
        **extra,
    }


def records(density, sparse=True):
    """Two epochs; sparse runs get topology updates between them, with growing Rs."""
    layer = {name: density for name in LAYERS}
    out = []
    for epoch in (1, 2):
        step = 100 * epoch
        if sparse:
            for s in (step - 60, step - 20):
                rate = density + s / 1000
                out.append(
                    {
                        "kind": "update",
                        "step": s,
                        "density": density,
                        "itop_rate": rate,
                        "prune_rate": 0.3,
                        "removed": 12,
                        "layer_density": layer,
                        "layer_explored": {n: min(1.0, rate + i / 10) for i, n in enumerate(LAYERS)},
                    }
                )
        out.append(
            {
                "kind": "epoch",
                "epoch": epoch,
                "step": step,
                "train_loss": 1 / epoch,
                "train_acc": 0.5 + epoch / 10,
                "val_acc": 0.5 + epoch / 10,
                "lr": 0.1,
                "density": density,
                "itop_rate": density + step / 1000 if sparse else 1.0,
                "seconds": 1.5,
                "layer_density": layer,
            }
        )
    return out


def write_run(root, name, density, result=None, tail="", **settings):
    """Write a run directory; result=None leaves it unfinished; `tail` is appended raw;
    `settings` replace or add config.json keys (seed=1, update_frequency=25, ...)."""
    path = Path(root) / name
    path.mkdir(parents=True)
    sparse = density < 1.0
    config = {
        "model": "lenet300",
        "data": "mnist",
        "sparse": sparse,
        "fix": False,
        "density": density,
        "growth": "gradient",
        "death": "magnitude",
        "redistribution": "none",
        "multiplier": 1,
        "epochs": 2,
        "seed": 0,
        "update_frequency": 40,
        **settings,
    }
    (path / "config.json").write_text(json.dumps(config))
    lines = "".join(json.dumps(r) + "\n" for r in records(density, sparse))
    (path / "metrics.jsonl").write_text(lines + tail)
    if result is not None:
        (path / "summary.json").write_text(json.dumps(result))
    return path


def write_runs(root):
    """Two finished sparse runs, a dense baseline and a crashed (unfinished) run."""
    return [
        write_run(root, "rigl-95", 0.05, summary("RigL-ITOP", 0.05, 0.9312, 0.86, 0.15, 0.12)),
        write_run(root, "set-90", 0.1, summary("SET-ITOP", 0.1, 0.9205, 0.71, 0.1, 0.1)),
        write_run(root, "dense", 1.0, summary("Dense", 1.0, 0.9468, 1.0, 1.0, 1.0)),
        write_run(root, "crashed", 0.05, None, tail='{"kind": "epoch", "epo'),
    ]


# Update frequency -> (best-checkpoint accuracy, Rs) of seed 0 in write_study; seed i adds
# i * 0.002 to the accuracy and i * 0.01 to Rs.
STUDY = {25: (0.93, 0.9), 100: (0.92, 0.6), 400: (0.91, 0.3)}


def write_study(root, final=True):
    """An update-frequency study, 3 seeds each: SET-ITOP at 90% sparsity every 25, 100 and 400
    steps, plus 2 seeds each of a dense and a static baseline. Final-epoch accuracy is 0.005
    below the best checkpoint's; final=False writes summaries from before final_test_acc."""

    def result(method, density, acc, rs, flops, seed):
        extra = {"final_test_acc": acc + seed * 0.002 - 0.005} if final else {}
        return summary(method, density, acc + seed * 0.002, rs + seed * 0.01, flops, flops, **extra)

    dirs = []
    for every, (acc, rs) in STUDY.items():
        for seed in range(3):
            dirs.append(
                write_run(
                    root,
                    f"set-uf{every}-s{seed}",
                    0.1,
                    result("SET-ITOP", 0.1, acc, rs, 0.1, seed),
                    seed=seed,
                    growth="random",
                    update_frequency=every,
                    save=f"runs/set-uf{every}-s{seed}",
                    device="cuda:0",
                )
            )
    for seed in range(2):
        dirs.append(write_run(root, f"dense-s{seed}", 1.0, result("Dense", 1.0, 0.95, 1.0, 1.0, seed), seed=seed))
        dirs.append(write_run(root, f"static-s{seed}", 0.1, result("Static", 0.1, 0.90, 0.1, 0.1, seed), seed=seed, fix=True))
    return dirs
