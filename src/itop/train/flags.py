"""The flags of `itop train`, grouped for `--help`: model and data, sparsity, optimisation, run
management, distributed, and those accepted only for compatibility with the original scripts.
Parsing leaves every flag not given at None, so `config.resolve` can tell given flags from defaults.
"""

from __future__ import annotations

import argparse

from .presets import preset_names

DESCRIPTION = """Dynamic sparse training (In-Time Over-Parameterization).

Without a flag that names a model or a dataset (--model, --arch, --data, --preset, an ImageNet
directory), itop train runs the demo: RigL-ITOP, LeNet-300-100 at 95% sparsity on the embedded
5,000 MNIST digits, with the flags given as changes (itop train --epochs 5, itop train --density 0.02).
Naming a model or dataset gives the original main.py's meaning to every flag: dense unless --sparse."""


def _flag(parser, *names, **kw):
    kw.setdefault("default", None)
    parser.add_argument(*names, **kw)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="itop train", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("model and data")
    _flag(g, "--model", help="network, e.g. lenet300-100, vgg-c, wrn-28-2, set-mlp (an unknown name lists all)")
    _flag(g, "--arch", "-a", dest="arch", help="ImageNet network: resnet18/34/50/101/152")
    _flag(g, "--model-config", "-c", dest="model_config", help="ImageNet conv init: classic | fanin")
    _flag(g, "--preset", help=f"a SET system's recipe in one flag: {' | '.join(preset_names())} (other flags override it)")
    _flag(g, "--hidden", type=_hidden, help="set-mlp hidden widths, e.g. 3000,3000,3000")
    _flag(g, "--activation", help="set-mlp: relu | srelu | allrelu")
    _flag(
        g, "--allrelu-slope", dest="allrelu_slope", type=float, help="All-ReLU's slope alpha (layers alternate -alpha, +alpha; default 0.6)"
    )
    _flag(g, "--dropout", type=float, help="set-mlp: dropout after each hidden layer")
    _flag(
        g,
        "--data",
        help="mnist5k (embedded) | mnist | fashion-mnist | cifar10 | cifar100 | imagenet | a .mat/.npz/.csv file "
        "(default: mnist; mnist5k for set-mlp)",
    )
    _flag(g, "--data-dir", dest="data_dir", help="where dataset files are (default $ITOP_DATA_DIR or ~/.cache/itop/data)")
    p.add_argument("data_path", nargs="?", default=None, help="ImageNet root with train/ and val/ (the ImageNet script's positional)")
    _flag(g, "--valid_split", "--valid-split", dest="valid_split", type=float, help="share of the training set held out for validation")
    _flag(g, "--test-split", dest="test_split", type=float, help="tabular --data files: share held out for testing (default 1/3)")
    g = p.add_argument_group("sparsity")
    g.add_argument("--sparse", action="store_true", default=None, help="train sparse (dense without it)")
    g.add_argument("--dense", action="store_true", help="ImageNet script: train dense")
    g.add_argument("--fix", action="store_true", help="static sparse training: no topology updates")
    _flag(g, "--density", type=float, help="global density of the sparse layers (0.05 = 95%% sparsity)")
    _flag(g, "--init", help="masks chosen at initialisation: snip | grasp | synflow (global ranking, as the papers; with --fix, static)")
    g.add_argument(
        "--gradual",
        action="store_true",
        default=None,
        help="gradual pruning from --initial-density to --density on Zhu & Gupta's cubic schedule: GMP with --growth none, GraNet with --growth gradient",
    )
    _flag(g, "--initial-density", dest="initial_density", type=float, help="--gradual: the density training starts at (default 1.0: dense)")
    _flag(g, "--prune-start", dest="prune_start", type=float, help="--gradual: the epoch pruning starts at (default 0)")
    _flag(
        g,
        "--prune-end",
        dest="prune_end",
        type=float,
        help="--gradual: the epoch the final density is reached (default: three quarters of the run)",
    )
    _flag(g, "--sparse_init", "--sparse-init", dest="sparse_init", help="ERK | ER | uniform")
    _flag(g, "--epsilon", type=float, help="SET's ER: each layer keeps epsilon * (n_in + n_out) weights (replaces --density)")
    _flag(g, "--growth", help="random (SET) | gradient (RigL) | momentum | none")
    _flag(g, "--death", "--prune", dest="death", help="magnitude | SET | threshold")
    _flag(g, "--redistribution", type=_redistribution, help="none | magnitude | nonzeros | momentum")
    _flag(g, "--death-rate", "--prune-rate", dest="death_rate", type=float, help="initial prune rate")
    _flag(g, "--update_frequency", "--update-frequency", dest="update_frequency", type=int, help="optimizer steps between topology updates")
    _flag(g, "--update-every", dest="update_every", help="topology update interval: 'epoch' or a number of optimizer steps")
    _flag(g, "--decay-schedule", dest="decay_schedule", help="prune-rate decay: cosine | linear | constant")
    _flag(g, "--threshold", type=float, help="|w| below which --death threshold prunes (default 1e-3)")
    _flag(g, "--init-scale", dest="init_scale", help="sparse (for the actual fan-in; set-mlp default) | dense (the original's)")
    g.add_argument(
        "--truly-sparse",
        dest="truly_sparse",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="store and compute only the active weights of Linear and Conv2d layers (itop.sparse); needs --sparse",
    )
    _flag(g, "--structure", help="fan-in (constant fan-in, SRigL) | N:M, e.g. 2:4 (N of every M inputs); default unstructured")
    g.add_argument("--ablation", action="store_true", default=None, help="with --structure fan-in: SRigL's neuron ablation")
    _flag(g, "--ablation-threshold", dest="ablation_threshold", type=float, help="SRigL's gamma_sal (default 0.3)")
    g = p.add_argument_group("optimisation")
    _flag(g, "--epochs", type=int)
    _flag(g, "--multiplier", type=int, help="train m times as long (same update frequency)")
    _flag(g, "--batch-size", "-b", dest="batch_size", type=int)
    _flag(g, "--test-batch-size", dest="test_batch_size", type=int)
    _flag(g, "--optimizer", help="sgd | adam")
    _flag(g, "--lr", type=float)
    _flag(g, "--lr-schedule", dest="lr_schedule", help="multistep (1/2, 3/4) | step (every --decay_frequency steps) | cosine | constant")
    _flag(
        g,
        "--decay_frequency",
        "--decay-frequency",
        dest="decay_frequency",
        type=int,
        help="optimizer steps between x0.1 LR decays (--lr-schedule step; times --multiplier)",
    )
    _flag(g, "--warmup", type=int, help="warm-up epochs (ImageNet schedule only)")
    _flag(g, "--momentum", type=float)
    g.add_argument(
        "--nesterov",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Nesterov momentum (default: on for the CIFAR/MNIST script, off for ImageNet and the SET presets)",
    )
    _flag(g, "--l2", "--weight-decay", "--wd", dest="weight_decay", type=float)
    g.add_argument("--bn-weight-decay", action="store_true", default=None, help="ImageNet: weight decay on BN parameters too")
    _flag(g, "--l1", type=float, help="L1 penalty on the sparse weights")
    _flag(g, "--loss", help="cross-entropy | mse (sigmoid outputs, as the SET code)")
    _flag(g, "--label-smoothing", dest="label_smoothing", type=float)
    _flag(g, "--amp", help="mixed precision: none | bf16 | fp16")
    g.add_argument("--fp16", action="store_true", help="same as --amp fp16")
    _flag(g, "--seed", type=int)
    g = p.add_argument_group("run management")
    _flag(g, "--save", help="run directory (default runs/<model>-<data>-<method>-<time>)")
    _flag(g, "--resume", help="continue the run in this directory")
    _flag(g, "--iters", type=int, help="repeat the experiment N times (seeds seed..seed+N-1)")
    _flag(g, "--device", help="cpu | cuda | cuda:N (default: cuda when available)")
    g.add_argument("--no-cuda", action="store_true", help="train on the CPU")
    _flag(g, "--workers", "-j", dest="workers", type=int, help="ImageNet loader workers")
    _flag(g, "--log-interval", "--print-freq", "-p", dest="log_interval", type=int, help="steps between progress-bar loss updates")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument(
        "--tensorboard",
        action="store_true",
        default=None,
        help="write loss, accuracy, LR, density, Rs, prune rate and per-layer curves to <run>/tensorboard (pip install itop[tensorboard])",
    )
    g.add_argument("--channels-last", action="store_true", help="channels-last memory format for conv nets on GPU")
    g = p.add_argument_group(
        "distributed",
        "launch with torchrun (torchrun --nproc_per_node N -m itop train ...); "
        "the process group comes from its environment, no flag is needed",
    )
    g.add_argument(
        "--fsdp",
        action="store_true",
        help="shard every layer's weights, optimizer state and masks over the processes with FSDP2 (fully_shard); "
        "checkpoints become DCP directories that resume on any process count dividing the global batch",
    )
    _flag(g, "--local_rank", "--local-rank", dest="local_rank", help="accepted for compatibility (torchrun sets LOCAL_RANK)")
    _flag(g, "--master_port", help="accepted for compatibility (torchrun's --master-port)")
    g = p.add_argument_group("accepted for compatibility with the original scripts, no effect")
    for name in (
        "--start-epoch",
        "--max-threads",
        "--static-loss-scale",
        "--explo-start-epoch",
        "--pretrained-weights",
        "--grow-switch",
        "--bench-iterations",
        "--bench-warmup",
    ):
        _flag(g, name, metavar="X", help="ignored")
    for name in ("--save-features", "--bench", "--dynamic-loss-scale", "--verbose", "--gather-checkpoints", "--spp", "--prof"):
        g.add_argument(name, action="store_true", help="ignored")
    for names in (("-e", "--evaluate"), ("--benchmark-training",), ("--benchmark-inference",)):
        g.add_argument(*names, action="store_true", help="refused with a pointer to what does it (ImageNet script modes)")
    return p


def _hidden(text: str) -> list[int]:
    from itop.models.set_mlp import parse_hidden

    try:
        return list(parse_hidden(text))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _redistribution(value: str) -> str:
    """The ImageNet script calls `nonzeros` `nonzero`."""
    return "nonzeros" if value == "nonzero" else value


def names_model_or_data(args: argparse.Namespace) -> bool:
    """Does the command line name a model or a dataset (and so take the original's semantics)?"""
    return any(getattr(args, key) is not None for key in ("model", "arch", "data", "data_path", "preset"))
