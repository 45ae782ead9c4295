"""Seconds per epoch: `itop train --preset million-neurons` against the truly sparse SET-MLP it reproduces.

The reference is the truly sparse SET-MLP of Liu, Mocanu et al. 2021, "Sparse evolutionary deep
learning with over one million artificial neurons on commodity hardware" (Neural Computing and
Applications), github.com/Shiweiliuiiiiiii/SET-MLP-ONE-MILLION-NEURONS: NumPy/SciPy sparse matrices
and a Cython kernel for the weight gradients. The claim checked: through the command line users run,
itop trains an epoch of 784-H-H-H-10 at least 5x faster than the reference at H=1,000 and at least
10x faster at H=10,000.

Run by hand, on the machine to be measured (quiet: nothing else busy):
    python benchmarks/versus_reference.py --reference-dir CHECKOUT [--reference-python PYTHON]
        [--hidden 1000,10000] [--rounds 3] [--out bench-runs/versus-reference] [--quick]

CHECKOUT: the reference's code with its Cython module built for PYTHON (default: this Python;
the reference needs only NumPy, SciPy and Cython, no torch). Give it the libraries of its time, in
a virtual environment of its own: on current SciPy it needs a copying `coo_matrix` (below), which
slowed its epoch at H=10,000 from 45 s (NumPy 1.26.4, SciPy 1.11.4, no workaround) to 66 s (NumPy
2.4.6, SciPy 1.17.1), on the same machine the same day:
    git clone https://github.com/Shiweiliuiiiiiii/SET-MLP-ONE-MILLION-NEURONS CHECKOUT
    python -m venv REFENV && REFENV/bin/pip install "numpy<2" "scipy<1.12" "cython<3.1"
    cd CHECKOUT && rm -f sparseoperations.c *.so
    CFLAGS="-I$(REFENV/bin/python -c 'import numpy; print(numpy.get_include())')" REFENV/bin/cythonize -i sparseoperations.pyx
    then --reference-python REFENV/bin/python (REFENV an absolute path)
(its README says only "python set_mlp_sparse_data_structures.py"; the build command is the one in
the header of its sparseoperations.pyx, "cythonize -a -i sparseoperations.pyx", -a only writing an
HTML annotation; the checkout's own .c and .so were made for Python 3.5, and the module includes
NumPy's headers, which cythonize does not add by itself). benchmarks/set_reference.py runs it,
without touching the checkout, with two workarounds for current SciPy/NumPy where they are needed
(it reports which applied; none on the libraries above).

Both sides train 784-H-H-H-10 for one epoch on the same 4,000 digits (itop's `mnist5k` training
split, no validation split; the reference gets them as itop's loader normalises them), with the
reference's recipe: epsilon 10 (each layer keeps 10 * (n_in + n_out) weights), zeta 0.3, batch 2,
ReLU, softmax and cross-entropy, no dropout, momentum 0.9; the reference at its lr 0.01 and weight
decay 2e-4, itop at the preset's lr 0.005 and weight decay 4e-3 (the same update in torch's SGD on
a mean loss: src/itop/train/presets.py). itop runs as a user types it, through this venv's `itop`
console script:
    itop train --preset million-neurons --hidden H,H,H --epochs 1 --dropout 0 --no-progress --seed S --save DIR
(the preset already trains on mnist5k with no validation split).

What "seconds per epoch" covers on each side (neither includes process start, imports, data loading,
model building or the test evaluation):
- reference: its own clock, read from what its `fit` prints: "Training time" (its loop over the
  2,000 batches: forward, backpropagation, weight update; not the shuffle before it) plus "Weights
  evolution time" of one topology update (`weightsEvolution_II`, SET's prune and regrow). Its loop
  runs that update after every epoch but the last, so with one epoch set_reference.py runs it once
  after `fit` (--evolve-after-last) and times it as `fit` does. Its test evaluation is skipped.
- itop: the figure ending its "epoch 1/1 | ... | N s" line (Trainer.fit in src/itop/train/loop.py:
  perf_counter around train_epoch and the validation pass): the loop over the 2,000 batches (loader,
  forward, backward, SGD step), the topology update after the epoch's last step (one SET prune and
  regrow: itop updates after every epoch, the last included), the epoch's loss and accuracy sums, and
  the validation pass (none here). Not the checkpoint writes after it. Printed to 0.1 s.
Both sides therefore hold one epoch of training and one topology update.

Paired measurement: for each H, --rounds rounds of (reference, itop), alternating which goes first;
round r uses seed r on both sides. The ratio reference / itop is taken per round; the table gives
its median [first quartile, third quartile], each side's median s/epoch, and PASS/MISS against the
target (the median ratio). For information: the reference's training alone (without its topology
update) over itop's epoch, each whole command's wall time, and the machine's load (/proc/loadavg,
1-minute average, before and after each run): what else the machine was doing is not controlled
here. The reference has no threading of its own (its Cython loop is serial, SciPy's sparse products
too); itop uses torch's threads (the machine line gives their number).

--quick: H=1,000 and one round, to check the script runs. It still trains on all 4,000 digits: the
reference could take fewer, but itop's mnist5k split has no smaller form (another --data would be
another command and other data), and the pair must see the same digits.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from machine import machine_line, print_header
from truly_sparse import fmt_q, quartiles, ratios

HERE = Path(__file__).resolve().parent
# The reference's recipe (its __main__), as set_mlp.py runs it, without dropout.
REFERENCE_RECIPE = dict(epsilon=10, zeta=0.3, batch_size=2, lr=0.01, momentum=0.9, weight_decay=2e-4)
TARGETS = {1000: 5.0, 10000: 10.0}  # the claim: at least this many times faster per epoch
EPOCH_LINE = re.compile(r"^epoch\s+1/1 \|.*\|\s*([0-9.]+) s\s*$", re.M)


def loadavg() -> float:
    """The machine's 1-minute load average (/proc/loadavg), NaN where there is none."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return float("nan")


def itop_command() -> str:
    """This venv's `itop` console script (the command users run), else the one on PATH."""
    beside = Path(sys.executable).with_name("itop")
    found = str(beside) if beside.is_file() else shutil.which("itop")
    if not found:
        raise SystemExit(f"no `itop` console script beside {sys.executable} or on PATH: pip install -e . first.")
    return found


def reference_data(path: Path) -> Path:
    """The reference's input: itop's mnist5k training split (what --preset million-neurons trains on,
    normalised as itop's loader does), flattened, labels as class numbers. No test evaluation runs:
    the test arrays are two training digits, only to fill the file's format."""
    if not path.is_file():
        from itop.data import load_dataset
        from itop.data.mnist import MEAN, STD

        train = load_dataset("mnist5k", valid_split=0.0).train
        x = ((train.images.float() / 255 - MEAN[0]) / STD[0]).reshape(len(train.images), -1).numpy()
        y = train.labels.numpy()
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, x_train=x, y_train=y, x_test=x[:2], y_test=y[:2])
    return path


def run_reference(args, data: Path, hidden: int, seed: int) -> dict:
    out = Path(args.out) / f"reference-h{hidden}-s{seed}.json"
    out.unlink(missing_ok=True)
    argv = [
        args.reference_python,
        str(HERE / "set_reference.py"),
        "--reference-dir",
        args.reference_dir,
        "--data",
        str(data),
        "--out",
        str(out),
        "--seed",
        str(seed),
        "--epochs",
        "1",
        "--hidden",
        ",".join([str(hidden)] * 3),
        *(x for key, value in REFERENCE_RECIPE.items() for x in (f"--{key.replace('_', '-')}", str(value))),
        "--no-test",
        "--evolve-after-last",
    ]
    load_before, started = loadavg(), time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    wall, load_after = time.perf_counter() - started, loadavg()
    if done.returncode != 0:
        raise SystemExit(f"the reference run failed ({' '.join(argv)}):\n{done.stderr[-2000:]}")
    result = json.loads(out.read_text())
    if len(result.get("epoch_train_seconds", [])) != 1 or result.get("evolution_after_last_seconds") is None:
        raise SystemExit(
            f"{out}: no training time or topology-update time of the reference's epoch in it ({HERE / 'set_reference.py'} too old?)"
        )
    train = result["epoch_train_seconds"][0]
    evolve = result["evolution_after_last_seconds"]
    return dict(
        epoch=train + evolve,
        train=train,
        evolve=evolve,
        wall=wall,
        load=(load_before, load_after),
        workarounds=result["workarounds"],
        loss=result["train_loss"][0],
        versions=f"Python {result['python']}, NumPy {result['numpy']}",
    )


def run_itop(args, hidden: int, seed: int) -> dict:
    run_dir = Path(args.out) / f"itop-h{hidden}-s{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run each round (an existing directory would resume)
    argv = [
        itop_command(),
        "train",
        "--preset",
        "million-neurons",
        "--hidden",
        ",".join([str(hidden)] * 3),
        "--epochs",
        "1",
        "--dropout",
        "0",
        "--no-progress",
        "--seed",
        str(seed),
        "--save",
        str(run_dir),
    ]
    load_before, started = loadavg(), time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    wall, load_after = time.perf_counter() - started, loadavg()
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{done.stderr[-2000:]}")
    lines = EPOCH_LINE.findall(done.stdout)
    if len(lines) != 1:
        raise SystemExit(f"{' '.join(argv)}: no single 'epoch 1/1 | ... | N s' line in its output:\n{done.stdout[-2000:]}")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    updates = sum(1 for record in records if record.get("kind") == "update")
    if updates != 1:
        raise SystemExit(f"{run_dir / 'metrics.jsonl'}: {updates} topology updates in the epoch, where 1 was expected.")
    device = re.search(r"device (\S+?),", done.stdout)
    loss = re.search(r"^epoch\s+1/1 \| loss ([0-9.]+)", done.stdout, re.M)
    return dict(
        epoch=float(lines[0]),
        wall=wall,
        load=(load_before, load_after),
        device=device.group(1) if device else "?",
        updates=updates,
        loss=float(loss.group(1)) if loss else float("nan"),
        command=" ".join(["itop", *argv[1:]]),
    )


def fmt_load(runs: list[dict]) -> str:
    return ", ".join(f"{r['load'][0]:.2f}->{r['load'][1]:.2f}" for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--reference-dir",
        required=True,
        help="a checkout of github.com/Shiweiliuiiiiiii/SET-MLP-ONE-MILLION-NEURONS, its Cython module built",
    )
    parser.add_argument(
        "--reference-python",
        default=sys.executable,
        help="the Python that runs the reference (NumPy, SciPy, its built module); default this one",
    )
    parser.add_argument("--hidden", default="1000,10000", help="the widths H of 784-H-H-H-10 to measure")
    parser.add_argument("--rounds", type=int, default=3, help="paired rounds per H")
    parser.add_argument("--out", default="bench-runs/versus-reference")
    parser.add_argument("--quick", action="store_true", help="H=1,000, one round: checks the script runs")
    args = parser.parse_args()
    widths = [1000] if args.quick else [int(h) for h in args.hidden.split(",")]
    rounds = 1 if args.quick else args.rounds
    if rounds < 1:
        raise SystemExit("--rounds must be at least 1.")
    args.reference_dir = str(Path(args.reference_dir).expanduser().resolve())

    print(machine_line())
    data = reference_data(Path(args.out) / "mnist5k-train.npz")
    r = REFERENCE_RECIPE
    print(
        f"784-H-H-H-10 for H in {', '.join(f'{h:,}' for h in widths)}; {rounds} paired round(s) each, alternating which "
        f"side goes first; 1 epoch over the same 4,000 digits (itop's mnist5k training split; the reference's copy: {data})"
    )
    print(
        f"reference: truly sparse SET-MLP (Liu, Mocanu et al. 2021) in {args.reference_dir} under {args.reference_python}: "
        f"epsilon {r['epsilon']}, zeta {r['zeta']}, batch {r['batch_size']}, lr {r['lr']:g}, momentum {r['momentum']}, "
        f"weight decay {r['weight_decay']:g}, ReLU, no dropout"
    )
    print(
        "  its s/epoch: its own 'Training time' of the epoch (the batch loop) + its 'Weights evolution time' of one "
        "topology update (run once after fit: its loop skips it after the last epoch); no test evaluation"
    )
    print(f"itop: {itop_command()} train --preset million-neurons --hidden H,H,H --epochs 1 --dropout 0 --no-progress --seed S --save DIR")
    print(
        "  its s/epoch: the figure on its 'epoch 1/1 | ... | N s' line (0.1 s resolution): the batch loop, the topology "
        "update after the epoch's last step, the epoch's sums and the validation pass (none: no validation split); "
        "not the checkpoint writes or the test evaluation"
    )
    print("each side's wall time of the whole command (process start, imports, data, model, saving) is shown for information\n")

    started, results = time.perf_counter(), {}
    for hidden in widths:
        refs, itops = [], []
        for round_ in range(rounds):
            seed = round_ + 1
            order = ("reference", "itop") if round_ % 2 == 0 else ("itop", "reference")
            for side in order:
                if side == "reference":
                    refs.append(run_reference(args, data, hidden, seed))
                else:
                    itops.append(run_itop(args, hidden, seed))
            ref, it = refs[-1], itops[-1]
            print(
                f"H={hidden:,} round {seed} ({order[0]} first): reference {ref['epoch']:.2f} s/epoch "
                f"(training {ref['train']:.2f} + topology update {ref['evolve']:.2f}; command {ref['wall']:.1f} s; "
                f"loss {ref['loss']:.3f}; load {ref['load'][0]:.2f}->{ref['load'][1]:.2f}), itop {it['epoch']:.1f} s/epoch "
                f"(on {it['device']}; {it['updates']} topology update; command {it['wall']:.1f} s; loss {it['loss']:.3f}; load {it['load'][0]:.2f}->{it['load'][1]:.2f}): "
                f"{ref['epoch'] / it['epoch']:.2f}x  ({time.perf_counter() - started:.0f} s so far)",
                flush=True,
            )
        results[hidden] = (refs, itops)
    print(f"reference's workarounds: {'; '.join(refs[0]['workarounds']) or 'none needed'}; {refs[0]['versions']}")

    print()
    print_header(f"Seconds per epoch, 784-H-H-H-10, 4,000 digits, batch 2: median [q1, q3] over {rounds} paired round(s)")
    print("| H | reference s/epoch | itop s/epoch | reference / itop (per round) | target | result |")
    print("|---|---|---|---|---|---|")
    summary = []
    for hidden, (refs, itops) in results.items():
        ref_epoch, itop_epoch = [x["epoch"] for x in refs], [x["epoch"] for x in itops]
        ratio = ratios(ref_epoch, itop_epoch)
        target = TARGETS.get(hidden)
        verdict = "-" if target is None else ("PASS" if ratio[0] >= target else "MISS")
        print(
            f"| {hidden:,} | {fmt_q(quartiles(ref_epoch))} | {fmt_q(quartiles(itop_epoch))} | {fmt_q(ratio, unit='x')} | "
            f"{'-' if target is None else f'>= {target:g}x'} | {verdict} |"
        )
        print(
            f"| {hidden:,}, for information | training alone {fmt_q(quartiles([x['train'] for x in refs]))}; "
            f"command {statistics.median(x['wall'] for x in refs):.1f} s; load {fmt_load(refs)} | "
            f"command {statistics.median(x['wall'] for x in itops):.1f} s on {itops[0]['device']}; load {fmt_load(itops)} | "
            f"training alone / itop epoch {fmt_q(ratios([x['train'] for x in refs], itop_epoch), unit='x')}; "
            f"commands {fmt_q(ratios([x['wall'] for x in refs], [x['wall'] for x in itops]), unit='x')} | "
            "machine load not controlled | - |"
        )
        summary.append(dict(hidden=hidden, ratio=ratio, target=target, verdict=verdict, reference=refs, itop=itops))
    print(
        "\nreference s/epoch: its training time + one topology update, by its own clock; itop s/epoch: its epoch line "
        "(training + one topology update). load: /proc/loadavg's 1-minute average before->after each run, per round."
    )
    (Path(args.out) / "results.json").write_text(json.dumps(dict(machine=machine_line(), rounds=rounds, results=summary), indent=1))
    print(f"(total {time.perf_counter() - started:.0f} s; per-run figures in {Path(args.out) / 'results.json'})")


if __name__ == "__main__":
    main()
