"""Run the truly sparse SET-MLP of Liu, Mocanu et al. 2021 on given data: the reference side of set_mlp.py.

Run by set_mlp.py --reference-dir (not by hand), as
    python benchmarks/set_reference.py --reference-dir CHECKOUT --data data.npz --seed 1 --out result.json

CHECKOUT is a checkout of github.com/Shiweiliuiiiiiii/SET-MLP-ONE-MILLION-NEURONS, the truly sparse
SET-MLP ("Sparse evolutionary deep learning with over one million artificial neurons on commodity
hardware", Neural Computing and Applications 2021), with its Cython module `sparseoperations` built
for the Python that runs this script (see the header of its sparseoperations.pyx). Nothing of it is
copied here: this script imports its `set_mlp_sparse_data_structures` module and calls its
`SET_MLP.fit` and `SET_MLP.predict` as its own `__main__` does, with the architecture, data and
hyperparameters given on the command line. It needs only NumPy and SciPy (no torch, no itop), so it
can run under another Python (`set_mlp.py --reference-python`).

Two defects of that code stop it from learning or running on current libraries; this script works
around both in its own process, without touching the checkout, and reports which it applied:
- on SciPy >= 1.x, `coo_matrix(csr)` shares the CSR's data array, so the Cython kernel writes the
  weight gradients over the weights (the network stays at chance): the module's `coo_matrix` is
  replaced by one that copies its input;
- NumPy >= 2.4 has no `np.in1d` (called by the topology update): `np.isin` stands in for it.
Its other defects are left as they are (they are what the comparison measures): the gradient is
divided by the batch size twice, weight decay is applied outside the learning rate and momentum,
dropout's mask is missing from the backward pass (the comparison trains without dropout).

Writes a JSON file: training loss per epoch (the reference's own figure, the mean over batches of
the batch-mean cross-entropy), test accuracy after the last epoch, seconds, and the workarounds;
also the reference's own timings, read from the lines its `fit` prints: the training seconds of each
epoch ("Training time", its batch loop) and of each topology update ("Weights evolution time", ~0
after the last epoch, where its loop skips the update). For benchmarks/versus_reference.py:
`--evolve-after-last` runs one more topology update after `fit` (`weightsEvolution_II`, as its loop
does after every other epoch) and times it as `fit` does; `--no-test` skips the test evaluation.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import io
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

MODULE = "set_mlp_sparse_data_structures"


def load_reference(directory: Path):
    """The reference module imported from `directory`, with the workarounds it needs here."""
    if not (directory / f"{MODULE}.py").is_file():
        raise SystemExit(
            f"{directory}: no {MODULE}.py; --reference-dir must be a checkout of the truly sparse SET-MLP "
            "(github.com/Shiweiliuiiiiiii/SET-MLP-ONE-MILLION-NEURONS)."
        )
    sys.path.insert(0, str(directory))
    try:
        import sparseoperations  # noqa: F401  (the reference's Cython kernel)
    except ImportError as exc:
        raise SystemExit(
            f"{directory}: its Cython module sparseoperations does not import under {sys.executable} "
            f"(Python {sys.version_info.major}.{sys.version_info.minor}: {exc}); build it there as its "
            "sparseoperations.pyx says, or name a Python with NumPy, SciPy and that module built "
            "with --reference-python."
        ) from None
    with contextlib.redirect_stdout(io.StringIO()):
        module = importlib.import_module(MODULE)
    missing = [name for name in ("SET_MLP", "CrossEntropy", "SoftMax", "Relu") if not hasattr(module, name)]
    if missing:
        raise SystemExit(
            f"{directory / MODULE}.py has no {', '.join(missing)}: this is not the truly sparse SET-MLP of "
            "Liu, Mocanu et al. 2021 (the official SET-MLP of Mocanu et al. 2018 trains with MSE and has no "
            "CrossEntropy); use a checkout of github.com/Shiweiliuiiiiiii/SET-MLP-ONE-MILLION-NEURONS."
        )
    return module, apply_workarounds(module)


def apply_workarounds(module) -> list[str]:
    """Work around the two defects that stop the reference on current SciPy/NumPy; says which applied."""
    import scipy
    from scipy.sparse import coo_matrix, csr_matrix

    applied = []
    probe = csr_matrix(np.eye(2))
    if np.shares_memory(coo_matrix(probe).data, probe.data):

        def copying_coo_matrix(arg, *args, **kwargs):
            kwargs["copy"] = True
            return coo_matrix(arg, *args, **kwargs)

        module.coo_matrix = copying_coo_matrix
        applied.append(f"coo_matrix copies its input (SciPy {scipy.__version__} shares the CSR's data)")
    if not hasattr(np, "in1d"):

        def in1d(a, b, *args, **kwargs):  # in1d flattened its result; isin keeps the input's shape
            return np.isin(a, b, *args, **kwargs).ravel()

        np.in1d = in1d
        applied.append(f"np.in1d is np.isin, flattened (NumPy {np.__version__} has no in1d)")
    return applied


def timedelta_seconds(text: str) -> float:
    """Seconds of a datetime.timedelta as str() prints it ('0:00:08.123456', '1 day, 0:00:01')."""
    days = 0
    if "day" in text:
        head, text = text.split(",", 1)
        days = int(head.split()[0])
    hours, minutes, seconds = text.strip().split(":")
    return days * 86400 + int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def own_timings(log: str, label: str) -> list[float]:
    """The seconds of each `label` line the reference's fit printed ('Training time:  0:00:08.1 ; ...')."""
    return [timedelta_seconds(m) for m in re.findall(rf"{label}:?\s+([^;\n]+?)\s*(?:;|$)", log, flags=re.M)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference-dir", required=True)
    parser.add_argument("--data", required=True, help=".npz with x_train, y_train, x_test, y_test (labels as class numbers)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--hidden", default="1000,1000,1000")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--epsilon", type=int, default=10)
    parser.add_argument("--zeta", type=float, default=0.3)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--weight-decay", type=float, default=2e-4)
    parser.add_argument("--no-test", action="store_true", help="skip the test evaluation after training (test_acc null)")
    parser.add_argument(
        "--evolve-after-last",
        action="store_true",
        help="after fit, run the topology update its loop skips after the last epoch, timed as fit times it",
    )
    args = parser.parse_args()

    ref, workarounds = load_reference(Path(args.reference_dir).expanduser().resolve())
    data = np.load(args.data)
    x_train, x_test = data["x_train"].astype(np.float64), data["x_test"].astype(np.float64)
    classes = int(max(data["y_train"].max(), data["y_test"].max())) + 1
    y_train, y_test = (np.eye(classes)[data[key]] for key in ("y_train", "y_test"))
    hidden = [int(h) for h in args.hidden.split(",")]

    np.random.seed(args.seed)  # as the reference's __main__ seeds its run
    log = io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stdout(log):
        model = ref.SET_MLP((x_train.shape[1], *hidden, classes), (*[ref.Relu] * len(hidden), ref.SoftMax), epsilon=args.epsilon)
        metrics = model.fit(
            x_train,
            y_train,
            x_test,
            y_test,
            loss=ref.CrossEntropy,
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.lr,
            momentum=args.momentum,
            weight_decay=args.weight_decay,
            zeta=args.zeta,
            dropoutrate=0,
            testing=False,
        )
        trained = time.perf_counter() - started
        evolution_after_last = None
        if args.evolve_after_last:
            t5 = datetime.datetime.now()  # as fit times its weightsEvolution_II
            model.weightsEvolution_II()
            evolution_after_last = (datetime.datetime.now() - t5).total_seconds()
        accuracy = None
        if not args.no_test:
            batch = max(b for b in range(1, 1001) if len(x_test) % b == 0)  # predict() skips a last partial batch
            accuracy, _ = model.predict(x_test, y_test, batch_size=batch)  # no dropout: the same outputs as batch 1
    result = dict(
        train_loss=[float(v) for v in metrics[:, 0]],
        test_acc=None if accuracy is None else float(accuracy),
        seconds=trained,
        epoch_train_seconds=own_timings(log.getvalue(), "Training time"),
        epoch_evolution_seconds=own_timings(log.getvalue(), "Weights evolution time"),
        evolution_after_last_seconds=evolution_after_last,
        nnz=[int(model.w[i].nnz) for i in sorted(model.w)],
        workarounds=workarounds,
        numpy=np.__version__,
        python=sys.version.split()[0],
    )
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
