"""The `itop train` command line: every flag of the original `main.py` (CIFAR/MNIST) and of its
ImageNet script, with the same meanings and defaults, resolved into one plain `TrainConfig`.

The two original scripts disagree on defaults (batch 100 vs 64, density 0.05 vs 0.10, ERK vs
ER, ...). A run is an ImageNet run when it names `--data imagenet`, `--arch`, or a positional
data directory; it then takes the ImageNet script's defaults, including training sparse unless
`--dense` is given. `itop train` with no flags at all runs the demo preset below.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

from .presets import apply_set_rules, chosen_preset, preset_names

DEMO_ARGS = [
    "--sparse", "--model", "lenet300-100", "--data", "mnist5k", "--density", "0.05",
    "--growth", "gradient", "--death", "magnitude", "--update_frequency", "100",
    "--epochs", "100", "--batch-size", "100", "--lr", "0.1", "--seed", "18",
]

CIFAR_DEFAULTS = dict(batch_size=100, epochs=250, density=0.05, sparse_init="ERK", update_frequency=100,
                      weight_decay=5e-4, death="magnitude", death_rate=0.5, nesterov=True)
IMAGENET_DEFAULTS = dict(batch_size=64, epochs=90, density=0.10, sparse_init="ER", update_frequency=2000,
                         weight_decay=1e-4, death="magnitude", death_rate=0.5, nesterov=False)


class UsageError(ValueError):
    """A mistake in the command line: reported in one line, exit status 2."""


@dataclass
class TrainConfig:
    """Everything a run depends on; saved as config.json and compared on --resume."""

    model: str = ""
    data: str = "mnist"
    data_dir: str | None = None
    imagenet: bool = False
    sparse: bool = False
    fix: bool = False
    density: float = 0.05
    sparse_init: str = "ERK"
    growth: str = "random"
    death: str = "magnitude"
    redistribution: str = "none"
    death_rate: float = 0.5
    update_frequency: int = 100
    decay_schedule: str = "cosine"
    threshold: float = 1e-3
    multiplier: int = 1
    epochs: int = 250
    batch_size: int = 100
    test_batch_size: int = 100
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    optimizer: str = "sgd"
    weight_decay: float = 5e-4
    bn_weight_decay: bool = True
    l1: float = 0.0
    lr_schedule: str = "multistep"
    decay_frequency: int = 25000
    warmup: int = 0
    label_smoothing: float = 0.0
    model_config: str = "classic"
    valid_split: float = 0.1
    seed: int = 17
    iters: int = 1
    amp: str = "none"
    device: str = "auto"
    workers: int = 5
    log_interval: int = 100
    save: str = ""
    progress: bool = True
    channels_last: bool = False
    hidden: list[int] = field(default_factory=lambda: [1000, 1000, 1000])  # set-mlp hidden widths
    activation: str = "relu"  # set-mlp: relu | srelu | allrelu
    allrelu_slope: float = 0.6
    dropout: float = 0.0  # set-mlp: after each hidden activation
    init_scale: str = ""  # "" = the model's default (sparse for set-mlp, dense otherwise)
    epsilon: float | None = None  # SET's ER epsilon: per-layer densities instead of --density
    update_every: str = ""  # "epoch": one topology update after each epoch (overrides update_frequency)
    truly_sparse: bool = False
    loss: str = "cross-entropy"
    test_split: float = 1 / 3  # tabular files: the share held out for testing
    preset: str = ""
    processes: int = 1  # torchrun processes the run started with: the global batch is batch_size * processes
    ignored: list[str] = field(default_factory=list)

    @property
    def total_epochs(self) -> int:
        return self.epochs * self.multiplier

    @property
    def method(self) -> str:
        """The seed README's method name: Dense, SET-ITOP, RigL-ITOP, ... with '(m times)'."""
        if not self.sparse:
            return "Dense"
        if self.fix:
            name = "Static"
        else:
            name = {"random": "SET-ITOP", "gradient": "RigL-ITOP", "momentum": "SM-ITOP"}.get(self.growth, f"{self.growth}-ITOP")
        return f"{name} ({self.multiplier} times)" if self.multiplier > 1 else name

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def results_dict(self) -> dict:
        """The settings a checkpoint's numbers depend on: all but where files are and how the run is shown."""
        return result_settings(self.to_dict())


# What `--resume` may change: where the data is, which device and how many loader workers, the
# progress bar. Nothing else: a resumed run continues with the settings it was started with.
RESUME_OVERRIDES = ("data_dir", "device", "workers", "progress")


def result_settings(values: dict) -> dict:
    """`values` (a config as saved) without the settings that do not change results; a config
    saved before `processes` existed was a 1-process run."""
    return {"processes": 1, **{k: v for k, v in values.items() if k not in RESUME_OVERRIDES and k != "save"}}


def _flag(parser, *names, **kw):
    kw.setdefault("default", None)
    parser.add_argument(*names, **kw)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="itop train", description="Dynamic sparse training (In-Time Over-Parameterization).")
    p.add_argument("data_path", nargs="?", default=None, help="ImageNet root with train/ and val/ (ImageNet script's positional)")
    g = p.add_argument_group("sparse training")
    g.add_argument("--sparse", action="store_true", default=None, help="train sparse (dense without it)")
    g.add_argument("--dense", action="store_true", help="ImageNet script: train dense")
    g.add_argument("--fix", action="store_true", help="static sparse training: no topology updates")
    _flag(g, "--density", type=float, help="global density of the sparse layers (0.05 = 95%% sparsity)")
    _flag(g, "--sparse_init", "--sparse-init", dest="sparse_init", help="ERK | ER | uniform")
    _flag(g, "--growth", help="random (SET) | gradient (RigL) | momentum | none")
    _flag(g, "--death", "--prune", dest="death", help="magnitude | SET | threshold")
    _flag(g, "--redistribution", type=_redistribution, help="none | magnitude | nonzeros | momentum")
    _flag(g, "--death-rate", "--prune-rate", dest="death_rate", type=float, help="initial prune rate")
    _flag(g, "--update_frequency", "--update-frequency", dest="update_frequency", type=int, help="optimizer steps between topology updates")
    _flag(g, "--decay-schedule", dest="decay_schedule", help="prune-rate decay: cosine | linear | constant")
    _flag(g, "--threshold", type=float, help="|w| below which --death threshold prunes (default 1e-3)")
    g = p.add_argument_group("SET-MLP and truly sparse training")
    _flag(g, "--preset", help=f"a SET system's recipe in one flag: {' | '.join(preset_names())} (other flags override it)")
    g.add_argument("--truly-sparse", dest="truly_sparse", action=argparse.BooleanOptionalAction, default=None,
                   help="store and compute only the active weights of Linear layers (itop.sparse); needs --sparse")
    _flag(g, "--hidden", type=_hidden, help="set-mlp hidden widths, e.g. 3000,3000,3000")
    _flag(g, "--activation", help="set-mlp: relu | srelu | allrelu")
    _flag(g, "--allrelu-slope", dest="allrelu_slope", type=float, help="All-ReLU's slope alpha (layers alternate -alpha, +alpha; default 0.6)")
    _flag(g, "--dropout", type=float, help="set-mlp: dropout after each hidden layer")
    _flag(g, "--init-scale", dest="init_scale", help="sparse (for the actual fan-in; set-mlp default) | dense (the original's)")
    _flag(g, "--epsilon", type=float, help="SET's ER: each layer keeps epsilon * (n_in + n_out) weights (replaces --density)")
    _flag(g, "--update-every", dest="update_every", help="topology update interval: 'epoch' or a number of optimizer steps")
    _flag(g, "--loss", help="cross-entropy | mse (sigmoid outputs, as the SET code)")
    _flag(g, "--test-split", dest="test_split", type=float, help="tabular --data files: share held out for testing (default 1/3)")
    g = p.add_argument_group("training")
    _flag(g, "--model", help="network, e.g. lenet300-100, vgg-c, wrn-28-2 (an unknown name lists all)")
    _flag(g, "--arch", "-a", dest="arch", help="ImageNet network: resnet18/34/50/101/152")
    _flag(g, "--model-config", "-c", dest="model_config", help="ImageNet conv init: classic | fanin")
    _flag(g, "--data", help="mnist5k (embedded) | mnist | fashion-mnist | cifar10 | cifar100 | imagenet | a .mat/.npz/.csv file")
    _flag(g, "--data-dir", dest="data_dir", help="where dataset files are (default ~/.cache/itop/data)")
    _flag(g, "--multiplier", type=int, help="train m times as long (same update frequency)")
    _flag(g, "--epochs", type=int)
    _flag(g, "--batch-size", "-b", dest="batch_size", type=int)
    _flag(g, "--test-batch-size", dest="test_batch_size", type=int)
    _flag(g, "--lr", type=float)
    _flag(g, "--momentum", type=float)
    _flag(g, "--optimizer", help="sgd | adam")
    g.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None,
                   help="Nesterov momentum (default: on for the CIFAR/MNIST script, off for ImageNet and the SET presets)")
    _flag(g, "--l2", "--weight-decay", "--wd", dest="weight_decay", type=float)
    g.add_argument("--bn-weight-decay", action="store_true", default=None, help="ImageNet: weight decay on BN parameters too")
    _flag(g, "--l1", type=float, help="L1 penalty on the sparse weights")
    _flag(g, "--lr-schedule", dest="lr_schedule", help="multistep (1/2, 3/4) | step (every --decay_frequency steps) | cosine | constant")
    _flag(g, "--decay_frequency", "--decay-frequency", dest="decay_frequency", type=int, help="optimizer steps between x0.1 LR decays (--lr-schedule step; times --multiplier)")
    _flag(g, "--warmup", type=int, help="warm-up epochs (ImageNet schedule only)")
    _flag(g, "--label-smoothing", dest="label_smoothing", type=float)
    _flag(g, "--valid_split", "--valid-split", dest="valid_split", type=float)
    _flag(g, "--seed", type=int)
    _flag(g, "--iters", type=int, help="repeat the experiment N times (seeds seed..seed+N-1)")
    g = p.add_argument_group("system and output")
    _flag(g, "--amp", help="mixed precision: none | bf16 | fp16")
    g.add_argument("--fp16", action="store_true", help="same as --amp fp16")
    g.add_argument("--no-cuda", action="store_true", help="train on the CPU")
    _flag(g, "--device", help="cpu | cuda | cuda:N (default: cuda when available)")
    _flag(g, "--workers", "-j", dest="workers", type=int, help="ImageNet loader workers")
    _flag(g, "--log-interval", "--print-freq", "-p", dest="log_interval", type=int)
    _flag(g, "--save", help="run directory (default runs/<model>-<data>-<method>-<time>)")
    _flag(g, "--resume", help="continue the run in this directory")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--channels-last", action="store_true", help="channels-last memory format for conv nets on GPU")
    g = p.add_argument_group("accepted for compatibility, no effect")
    for name in ("--start-epoch", "--max-threads", "--master_port", "--local_rank", "--static-loss-scale",
                 "--explo-start-epoch", "--pretrained-weights", "--grow-switch", "--bench-iterations", "--bench-warmup"):
        _flag(g, name, help=argparse.SUPPRESS)
    for name in ("--save-features", "--bench", "--dynamic-loss-scale", "--verbose", "--gather-checkpoints", "--spp", "--prof"):
        g.add_argument(name, action="store_true", help=argparse.SUPPRESS)
    for names in (("-e", "--evaluate"), ("--benchmark-training",), ("--benchmark-inference",)):
        g.add_argument(*names, action="store_true", help=argparse.SUPPRESS)
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


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def parse_args(argv: list[str]) -> tuple[TrainConfig, str | None]:
    """(configuration, resume directory) from the command line; UsageError on bad input."""
    parser = build_parser()
    parser.__class__ = _Parser
    args = parser.parse_args(argv if argv else DEMO_ARGS)
    if args.resume is not None:
        return TrainConfig(), args.resume
    return resolve(args), None


def resume_overrides(argv: list[str]) -> dict:
    """The settings given beside `--resume`: only RESUME_OVERRIDES may change (UsageError otherwise)."""
    parser = build_parser()
    parser.__class__ = _Parser
    args = parser.parse_args(argv)
    names = {a.dest: a.option_strings[0] if a.option_strings else "a data directory" for a in parser._actions}
    given = {dest for dest, value in vars(args).items() if value not in (None, False) and dest != "resume"}
    allowed = {"data_dir", "data_path", "device", "workers", "no_progress", "no_cuda"}
    extra = sorted(given - allowed)
    if extra:
        raise UsageError(f"--resume continues a run with the settings it was started with, so {names[extra[0]]} cannot be given with it "
                         "(only --data-dir, --device, -j and --no-progress can); start a new run with another --save to change it.")
    overrides = {}
    if args.data_dir or args.data_path:
        overrides["data_dir"] = args.data_path or args.data_dir
    if args.device or args.no_cuda:
        overrides["device"] = "cpu" if args.no_cuda else args.device
    if args.workers is not None:
        overrides["workers"] = args.workers
    if args.no_progress:
        overrides["progress"] = False
    return overrides


def resolve(args: argparse.Namespace) -> TrainConfig:
    for flag in ("evaluate", "benchmark_training", "benchmark_inference"):
        if getattr(args, flag):
            raise UsageError(f"--{flag.replace('_', '-')} (the ImageNet script's evaluation and benchmark modes) is not part of itop train: "
                             "every run ends by testing its best model; time steps with benchmarks/step_overhead.py.")
    imagenet = args.data == "imagenet" or args.arch is not None or args.data_path is not None
    defaults = IMAGENET_DEFAULTS if imagenet else CIFAR_DEFAULTS
    values = {k: v for k, v in vars(args).items() if v is not None}
    cfg = TrainConfig()
    for key, value in defaults.items():
        setattr(cfg, key, value)
    preset = chosen_preset(args.preset, values)
    for key, value in preset.values.items():
        setattr(cfg, key, value)
    for f in dataclasses.fields(TrainConfig):
        if f.name in values and f.name not in ("sparse",):
            setattr(cfg, f.name, values[f.name])
    cfg.imagenet = imagenet
    if imagenet:
        cfg.data = "imagenet"
        cfg.model = _imagenet_model(args.arch or args.model or "resnet50")
        cfg.data_dir = args.data_path or args.data_dir
        cfg.sparse = not args.dense
        cfg.bn_weight_decay = bool(args.bn_weight_decay)
        cfg.lr_schedule = values.get("lr_schedule", "imagenet-step")
    else:
        cfg.sparse = (bool(args.sparse) or bool(preset.values.get("sparse"))) and not args.dense
    apply_set_rules(cfg, values)
    if args.fp16:
        cfg.amp = "fp16"
    if args.no_cuda:
        cfg.device = "cpu"
    cfg.progress = not args.no_progress
    cfg.channels_last = args.channels_last
    cfg.ignored = [k for k in ("start_epoch", "max_threads", "save_features", "bench") if getattr(args, k, None)]
    validate(cfg)
    return cfg


def _imagenet_model(name: str) -> str:
    """`--arch resnet18` means the ImageNet ResNet-18, not the CIFAR one of the same key."""
    from itop.models import list_models

    return f"imagenet-{name}" if f"imagenet-{name.lower()}" in list_models() else name


def validate(cfg: TrainConfig) -> None:
    """Refuse values no run can use, naming the flag and the valid choices."""
    from itop.models import list_models
    from itop.data import list_datasets
    from itop.data.registry import is_tabular_path

    if not cfg.model:
        raise UsageError(f"--model is required; choose one of {', '.join(list_models())}.")
    if cfg.device not in ("auto", "cpu", "cuda") and not (cfg.device.startswith("cuda:") and cfg.device[5:].isdigit()):
        raise UsageError(f"--device must be cpu, cuda or cuda:N, got {cfg.device!r}.")
    checks = [
        (0 < cfg.density <= 1, f"--density must be in (0, 1], got {cfg.density}"),
        (cfg.sparse_init.lower() in ("erk", "er", "uniform"), f"--sparse_init must be ERK, ER or uniform, got {cfg.sparse_init!r}"),
        (cfg.growth in ("random", "gradient", "momentum", "none"), f"--growth must be random, gradient, momentum or none, got {cfg.growth!r}"),
        (cfg.death.lower() in ("magnitude", "set", "threshold"), f"--death must be magnitude, SET or threshold, got {cfg.death!r}"),
        (cfg.redistribution in ("none", "magnitude", "nonzeros", "momentum"), f"--redistribution must be none, magnitude, nonzeros or momentum, got {cfg.redistribution!r}"),
        (0 < cfg.death_rate <= 1, f"--death-rate must be in (0, 1], got {cfg.death_rate}"),
        (cfg.update_frequency >= 1, f"--update_frequency must be at least 1, got {cfg.update_frequency}"),
        (cfg.decay_schedule in ("cosine", "linear", "constant"), f"--decay-schedule must be cosine, linear or constant, got {cfg.decay_schedule!r}"),
        (cfg.multiplier >= 1 and cfg.epochs >= 1, "--epochs and --multiplier must be at least 1"),
        (cfg.batch_size >= 1 and cfg.test_batch_size >= 1, "--batch-size and --test-batch-size must be at least 1"),
        (cfg.lr > 0, f"--lr must be positive, got {cfg.lr}"),
        (cfg.optimizer in ("sgd", "adam"), f"--optimizer must be sgd or adam, got {cfg.optimizer!r}"),
        (cfg.lr_schedule in ("multistep", "step", "cosine", "constant", "imagenet-step"), f"--lr-schedule must be multistep, step, cosine or constant, got {cfg.lr_schedule!r}"),
        (cfg.decay_frequency >= 1, f"--decay_frequency must be at least 1, got {cfg.decay_frequency}"),
        (0 <= cfg.valid_split < 1, f"--valid_split must be in [0, 1), got {cfg.valid_split}"),
        (cfg.amp in ("none", "bf16", "fp16"), f"--amp must be none, bf16 or fp16, got {cfg.amp!r}"),
        (cfg.model_config in ("classic", "fanin"), f"--model-config must be classic or fanin, got {cfg.model_config!r}"),
        (0 <= cfg.label_smoothing < 1, f"--label-smoothing must be in [0, 1), got {cfg.label_smoothing}"),
        (cfg.iters >= 1, "--iters must be at least 1"),
        (cfg.workers >= 0, f"-j/--workers must be at least 0, got {cfg.workers}"),
        (cfg.processes >= 1, f"processes must be at least 1, got {cfg.processes}"),
        (cfg.data in list_datasets() + ["imagenet"] or is_tabular_path(cfg.data),
         f"unknown dataset {cfg.data!r}; choose one of {', '.join(list_datasets() + ['imagenet'])}, or a .mat, .npz or .csv file"),
        (cfg.activation in ("relu", "srelu", "allrelu"), f"--activation must be relu, srelu or allrelu, got {cfg.activation!r}"),
        (0 <= cfg.dropout < 1, f"--dropout must be in [0, 1), got {cfg.dropout}"),
        (cfg.init_scale in ("", "sparse", "dense"), f"--init-scale must be sparse or dense, got {cfg.init_scale!r}"),
        (cfg.epsilon is None or cfg.epsilon > 0, f"--epsilon must be positive, got {cfg.epsilon}"),
        (cfg.epsilon is None or cfg.sparse, "--epsilon sets the density of sparse layers; add --sparse"),
        (cfg.update_every in ("", "epoch"), f"--update-every must be 'epoch' or a number of steps, got {cfg.update_every!r}"),
        (cfg.loss in ("cross-entropy", "mse"), f"--loss must be cross-entropy or mse, got {cfg.loss!r}"),
        (0 < cfg.test_split < 1, f"--test-split must be in (0, 1), got {cfg.test_split}"),
        (not cfg.truly_sparse or cfg.sparse, "--truly-sparse trains sparse layers truly sparse; add --sparse"),
        (not cfg.truly_sparse or "momentum" not in (cfg.growth, cfg.redistribution),
         "--growth momentum and --redistribution momentum need dense gradient averages, which --truly-sparse never holds; "
         "use --growth gradient (RigL) or random (SET)"),
    ]
    for ok, message in checks:
        if not ok:
            raise UsageError(message + ".")
    try:
        from itop.models import get_model_spec
        get_model_spec(cfg.model)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if not cfg.save:
        data = Path(cfg.data).stem if is_tabular_path(cfg.data) else cfg.data
        cfg.save = f"runs/{cfg.model}-{data}-{cfg.method.split(' ')[0].lower()}-{time.strftime('%Y%m%d-%H%M%S')}"
