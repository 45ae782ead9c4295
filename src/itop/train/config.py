"""The `itop train` command line: every flag of the original `main.py` (CIFAR/MNIST) and of its
ImageNet script, with the same meanings and defaults, resolved into one plain `TrainConfig`.

The two original scripts disagree on defaults (batch 100 vs 64, density 0.05 vs 0.10, ERK vs
ER, ...). A run is an ImageNet run when it names `--data imagenet`, `--arch`, or a positional
data directory; it then takes the ImageNet script's defaults, including training sparse unless
`--dense` is given. A command line that names no model and no dataset runs the demo below, with
its flags as changes (`itop train --epochs 5`).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

from .flags import build_parser, names_model_or_data
from .presets import PRESETS, Preset, preset_names

DEMO_ARGS = [
    "--sparse",
    "--model",
    "lenet300-100",
    "--data",
    "mnist5k",
    "--density",
    "0.05",
    "--growth",
    "gradient",
    "--death",
    "magnitude",
    "--update_frequency",
    "100",
    "--epochs",
    "100",
    "--batch-size",
    "100",
    "--lr",
    "0.1",
    "--seed",
    "18",
]

CIFAR_DEFAULTS = dict(
    batch_size=100,
    epochs=250,
    density=0.05,
    sparse_init="ERK",
    update_frequency=100,
    weight_decay=5e-4,
    death="magnitude",
    death_rate=0.5,
    nesterov=True,
)
IMAGENET_DEFAULTS = dict(
    batch_size=64,
    epochs=90,
    density=0.10,
    sparse_init="ER",
    update_frequency=2000,
    weight_decay=1e-4,
    death="magnitude",
    death_rate=0.5,
    nesterov=False,
)


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
    structure: str = ""  # "" (unstructured) | "fan-in" | "N:M"
    ablation: bool = False  # SRigL's neuron ablation (with structure fan-in)
    ablation_threshold: float = 0.3
    loss: str = "cross-entropy"
    test_split: float = 1 / 3  # tabular files: the share held out for testing
    preset: str = ""
    tensorboard: bool = False  # curves in <run>/tensorboard
    processes: int = 1  # torchrun processes the run started with: the global batch is batch_size * processes
    fsdp: bool = False  # shard the model with FSDP2 (fully_shard); checkpoints are DCP directories
    init: str = ""  # "" (random masks) | snip | grasp | synflow: masks chosen at initialisation (itop.init_masks)
    gradual: bool = False  # gradual pruning from --initial-density down to --density (GMP; GraNet with growth)
    initial_density: float = 1.0
    prune_start: float = 0.0  # epochs
    prune_end: float | None = None  # epochs; None: three quarters of the run
    ignored: list[str] = field(default_factory=list)

    @property
    def total_epochs(self) -> int:
        return self.epochs * self.multiplier

    @property
    def method(self) -> str:
        """The method name of the original ITOP code's README: Dense, SET-ITOP, RigL-ITOP, ... with '(m times)'."""
        if not self.sparse:
            return "Dense"
        dst = {"random": "SET-ITOP", "gradient": "RigL-ITOP", "momentum": "SM-ITOP"}.get(self.growth, f"{self.growth}-ITOP")
        at_init = {"snip": "SNIP", "grasp": "GraSP", "synflow": "SynFlow"}.get(self.init)
        if self.gradual:  # Zhu & Gupta's GMP; with regrowth GraNet (Liu et al. 2021)
            name = {"none": "GMP", "gradient": "GraNet"}.get(self.growth, f"GraNet ({self.growth} growth)")
        elif at_init:
            name = at_init if self.fix else f"{dst} from {at_init}"
        elif self.fix:
            name = "Static"
        else:
            name = dst
        if self.structure:  # "RigL-ITOP 2:4", "RigL-ITOP fan-in+ablation": before the multiplier, which plots strip
            name += f" {self.structure}+ablation" if self.ablation else f" {self.structure}"
        return f"{name} ({self.multiplier} times)" if self.multiplier > 1 else name

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def results_dict(self) -> dict:
        """The settings a checkpoint's numbers depend on: all but where files are and how the run is shown."""
        return result_settings(self.to_dict())


# What `--resume` may change: where the data is, which device and how many loader workers, the
# progress bar. Nothing else: a resumed run continues with the settings it was started with.
RESUME_OVERRIDES = ("data_dir", "device", "workers", "progress", "tensorboard")


def result_settings(values: dict) -> dict:
    """`values` (a config as saved) without the settings that do not change results; a config
    saved before `processes` existed was a 1-process run."""
    return {"processes": 1, "fsdp": False, **{k: v for k, v in values.items() if k not in RESUME_OVERRIDES and k != "save"}}


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def parse_args(argv: list[str]) -> tuple[TrainConfig, str | None]:
    """(configuration, resume directory) from the command line; UsageError on bad input."""
    parser = build_parser()
    parser.__class__ = _Parser
    args = parser.parse_args(argv)
    if args.resume is not None:
        return TrainConfig(), args.resume
    if not names_model_or_data(args):  # the demo, with the flags given as changes to it
        args = parser.parse_args([*DEMO_ARGS, *argv])
    return resolve(args), None


def resume_overrides(argv: list[str]) -> dict:
    """The settings given beside `--resume`: only RESUME_OVERRIDES may change (UsageError otherwise)."""
    parser = build_parser()
    parser.__class__ = _Parser
    args = parser.parse_args(argv)
    names = {a.dest: a.option_strings[0] if a.option_strings else "a data directory" for a in parser._actions}
    given = {dest for dest, value in vars(args).items() if value not in (None, False) and dest != "resume"}
    allowed = {"data_dir", "data_path", "device", "workers", "no_progress", "no_cuda", "tensorboard"}
    extra = sorted(given - allowed)
    lengths = [dest for dest in ("epochs", "multiplier") if dest in extra]
    if lengths:
        flag = names[lengths[0]]
        raise UsageError(
            f"--resume continues a run with the settings it was started with, so {flag} cannot be given with it: the run's "
            "length set its LR milestones and the sparsifier's prune-rate decay; to train longer, start a new run "
            f"with a larger {flag} and another --save."
        )
    if extra:
        raise UsageError(
            f"--resume continues a run with the settings it was started with, so {names[extra[0]]} cannot be given with it "
            "(only --data-dir, --device, -j, --no-progress and --tensorboard can); start a new run with another --save to change it."
        )
    overrides = {}
    if args.data_dir or args.data_path:
        overrides["data_dir"] = args.data_path or args.data_dir
    if args.device or args.no_cuda:
        overrides["device"] = "cpu" if args.no_cuda else args.device
    if args.workers is not None:
        overrides["workers"] = args.workers
    if args.no_progress:
        overrides["progress"] = False
    if args.tensorboard:
        overrides["tensorboard"] = True
    return overrides


def chosen_preset(name: str | None, given: dict) -> Preset:
    """The preset named by --preset (an empty one without it); UsageError for unknown names or a
    preset that needs a data file none was given for."""
    if name is None:
        return Preset("")
    if name not in PRESETS:
        raise UsageError(f"unknown --preset {name!r}; choose one of {', '.join(preset_names())}.")
    preset = PRESETS[name]
    if preset.needs_data and "data" not in given:
        raise UsageError(f"--preset {name} trains on {preset.needs_data}.")
    return preset


def apply_set_rules(cfg: TrainConfig, given: dict) -> None:
    """The rules between the SET flags, on the configuration resolved from defaults, preset and
    the flags `given`: set-mlp-only options, --update-every, --epsilon against --density."""
    from itop.data.registry import is_tabular_path
    from itop.models import get_model_spec

    try:
        family = get_model_spec(cfg.model).name if cfg.model else ""
    except ValueError:
        family = ""  # validate() names the unknown model
    for key in ("hidden", "activation", "dropout", "allrelu_slope"):
        if key in given and family != "set-mlp":
            raise UsageError(
                f"--{key.replace('_', '-')} shapes the SET-MLP; use it with --model set-mlp (this run's model is {cfg.model or 'not set'})."
            )
    if isinstance(given.get("update_every"), str) and given["update_every"] != "epoch":
        if not given["update_every"].isdigit() or int(given["update_every"]) < 1:
            raise UsageError(f"--update-every must be 'epoch' or a positive number of optimizer steps, got {given['update_every']!r}.")
        cfg.update_frequency, cfg.update_every = int(given["update_every"]), ""
    if "update_frequency" in given and "update_every" not in given:
        cfg.update_every = ""  # an explicit step count beats a preset's once-per-epoch
    if "test_split" in given and not is_tabular_path(cfg.data):
        raise UsageError(f"--test-split holds out a share of a .mat/.npz/.csv file; {cfg.data} comes with its own test set.")
    if "epsilon" in given:
        if "density" in given:
            raise UsageError("--epsilon sets every layer's density (and so the global one); give --epsilon or --density, not both.")
        if "sparse_init" in given and given["sparse_init"].lower() != "er":
            raise UsageError(f"--epsilon defines ER layer densities; drop --sparse_init {given['sparse_init']} or use --density with it.")
        cfg.sparse_init = "ER"
    elif "density" in given or ("sparse_init" in given and given["sparse_init"].lower() != "er"):
        cfg.epsilon = None  # a preset's epsilon yields to an explicit density or distribution


def apply_structure(cfg: TrainConfig, given: dict) -> None:
    """--structure as its canonical name; N:M sets the density to N/M (a different --density refused)."""
    from itop.sparsity import structured

    if not cfg.structure:
        if cfg.ablation:
            raise UsageError("--ablation is SRigL's neuron ablation for --structure fan-in; add --structure fan-in.")
        return
    try:
        parsed = structured.parse(cfg.structure, cfg.ablation, cfg.ablation_threshold)
    except ValueError as error:
        raise UsageError(str(error).replace("structure must be", "--structure must be").replace("ablation=True", "--ablation")) from None
    cfg.structure = parsed.name
    if parsed.kind != structured.FAN_IN:
        if "density" in given and abs(given["density"] - parsed.n / parsed.m) > 1e-9:
            raise UsageError(f"--structure {parsed.name} sets the density of the sparse layers to {parsed.n}/{parsed.m}; drop --density.")
        if "epsilon" in given:
            raise UsageError(f"--structure {parsed.name} sets the density of the sparse layers to {parsed.n}/{parsed.m}; drop --epsilon.")
        cfg.density, cfg.epsilon = parsed.n / parsed.m, None


def resolve(args: argparse.Namespace) -> TrainConfig:
    for flag in ("evaluate", "benchmark_training", "benchmark_inference"):
        if getattr(args, flag):
            raise UsageError(
                f"--{flag.replace('_', '-')} (the ImageNet script's evaluation and benchmark modes) is not part of itop train: "
                "every run ends by testing its best model; time steps with benchmarks/step_overhead.py."
            )
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
    if "data" not in values and "data" not in preset.values and not imagenet:
        cfg.data = default_data(cfg.model)
    apply_set_rules(cfg, values)
    apply_structure(cfg, values)
    if args.fp16:
        cfg.amp = "fp16"
    if args.no_cuda:
        cfg.device = "cpu"
    cfg.progress = not args.no_progress
    cfg.channels_last = args.channels_last
    cfg.fsdp = args.fsdp
    cfg.ignored = [k for k in ("start_epoch", "max_threads", "save_features", "bench") if getattr(args, k, None)]
    validate(cfg)
    return cfg


def default_data(model: str) -> str:
    """The dataset of a command line that names a model but no --data: the original main.py's
    MNIST, except for the SET-MLP, which main.py does not have: it trains on the embedded digits,
    so that `--model set-mlp` runs on a machine without a download."""
    from itop.models import get_model_spec

    try:
        family = get_model_spec(model).name if model else ""
    except ValueError:
        family = ""  # validate() names the unknown model
    return "mnist5k" if family == "set-mlp" else "mnist"


def _imagenet_model(name: str) -> str:
    """`--arch resnet18` means the ImageNet ResNet-18, not the CIFAR one of the same key."""
    from itop.models import list_models

    return f"imagenet-{name}" if f"imagenet-{name.lower()}" in list_models() else name


def validate(cfg: TrainConfig) -> None:
    """Refuse values no run can use, naming the flag and the valid choices."""
    from itop.data import list_datasets
    from itop.data.registry import is_tabular_path
    from itop.models import list_models

    if not cfg.model:
        raise UsageError(f"--model is required; choose one of {', '.join(list_models())}.")
    if cfg.device not in ("auto", "cpu", "cuda") and not (cfg.device.startswith("cuda:") and cfg.device[5:].isdigit()):
        raise UsageError(f"--device must be cpu, cuda or cuda:N, got {cfg.device!r}.")
    checks = [
        (0 < cfg.density <= 1, f"--density must be in (0, 1], got {cfg.density}"),
        (cfg.sparse_init.lower() in ("erk", "er", "uniform"), f"--sparse_init must be ERK, ER or uniform, got {cfg.sparse_init!r}"),
        (
            cfg.growth in ("random", "gradient", "momentum", "none"),
            f"--growth must be random, gradient, momentum or none, got {cfg.growth!r}",
        ),
        (cfg.death.lower() in ("magnitude", "set", "threshold"), f"--death must be magnitude, SET or threshold, got {cfg.death!r}"),
        (
            cfg.redistribution in ("none", "magnitude", "nonzeros", "momentum"),
            f"--redistribution must be none, magnitude, nonzeros or momentum, got {cfg.redistribution!r}",
        ),
        (0 < cfg.death_rate <= 1, f"--death-rate must be in (0, 1], got {cfg.death_rate}"),
        (cfg.update_frequency >= 1, f"--update_frequency must be at least 1, got {cfg.update_frequency}"),
        (
            cfg.decay_schedule in ("cosine", "linear", "constant"),
            f"--decay-schedule must be cosine, linear or constant, got {cfg.decay_schedule!r}",
        ),
        (cfg.multiplier >= 1 and cfg.epochs >= 1, "--epochs and --multiplier must be at least 1"),
        (cfg.batch_size >= 1 and cfg.test_batch_size >= 1, "--batch-size and --test-batch-size must be at least 1"),
        (cfg.lr > 0, f"--lr must be positive, got {cfg.lr}"),
        (cfg.optimizer in ("sgd", "adam"), f"--optimizer must be sgd or adam, got {cfg.optimizer!r}"),
        (
            cfg.lr_schedule in ("multistep", "step", "cosine", "constant", "imagenet-step"),
            f"--lr-schedule must be multistep, step, cosine or constant, got {cfg.lr_schedule!r}",
        ),
        (cfg.decay_frequency >= 1, f"--decay_frequency must be at least 1, got {cfg.decay_frequency}"),
        (0 <= cfg.valid_split < 1, f"--valid_split must be in [0, 1), got {cfg.valid_split}"),
        (cfg.amp in ("none", "bf16", "fp16"), f"--amp must be none, bf16 or fp16, got {cfg.amp!r}"),
        (cfg.model_config in ("classic", "fanin"), f"--model-config must be classic or fanin, got {cfg.model_config!r}"),
        (0 <= cfg.label_smoothing < 1, f"--label-smoothing must be in [0, 1), got {cfg.label_smoothing}"),
        (cfg.iters >= 1, "--iters must be at least 1"),
        (cfg.workers >= 0, f"-j/--workers must be at least 0, got {cfg.workers}"),
        (cfg.processes >= 1, f"processes must be at least 1, got {cfg.processes}"),
        (
            cfg.data in list_datasets() + ["imagenet"] or is_tabular_path(cfg.data),
            f"unknown dataset {cfg.data!r}; choose one of {', '.join(list_datasets() + ['imagenet'])}, or a .mat, .npz or .csv file",
        ),
        (cfg.activation in ("relu", "srelu", "allrelu"), f"--activation must be relu, srelu or allrelu, got {cfg.activation!r}"),
        (0 <= cfg.dropout < 1, f"--dropout must be in [0, 1), got {cfg.dropout}"),
        (cfg.init_scale in ("", "sparse", "dense"), f"--init-scale must be sparse or dense, got {cfg.init_scale!r}"),
        (cfg.epsilon is None or cfg.epsilon > 0, f"--epsilon must be positive, got {cfg.epsilon}"),
        (cfg.epsilon is None or cfg.sparse, "--epsilon sets the density of sparse layers; add --sparse"),
        (cfg.update_every in ("", "epoch"), f"--update-every must be 'epoch' or a number of steps, got {cfg.update_every!r}"),
        (cfg.loss in ("cross-entropy", "mse"), f"--loss must be cross-entropy or mse, got {cfg.loss!r}"),
        (0 < cfg.test_split < 1, f"--test-split must be in (0, 1), got {cfg.test_split}"),
        (not cfg.truly_sparse or cfg.sparse, "--truly-sparse trains sparse layers truly sparse; add --sparse"),
        (not cfg.structure or cfg.sparse, f"--structure {cfg.structure} shapes the sparse layers' masks; add --sparse"),
        (
            not cfg.structure or not cfg.truly_sparse,
            "--structure trains masked layers; drop --truly-sparse (itop.sparse.export turns fan-in layers into condensed ones for inference)",
        ),
        (
            not cfg.structure or cfg.redistribution == "none",
            f"--structure fixes every layer's count; use --redistribution none (got {cfg.redistribution})",
        ),
        (
            not cfg.structure or cfg.growth != "none",
            "--structure regrows every row or group to its count; choose --growth random, gradient or momentum",
        ),
        (cfg.init in ("", "snip", "grasp", "synflow"), f"--init must be snip, grasp or synflow, got {cfg.init!r}"),
        (not cfg.init or cfg.sparse, f"--init {cfg.init} chooses the sparse layers' masks; add --sparse"),
        (not cfg.gradual or cfg.sparse, "--gradual prunes the sparse layers down to --density; add --sparse"),
        (not (cfg.init and cfg.gradual), "--init and --gradual each choose how the sparse topology starts; give one of them"),
        (not (cfg.gradual and cfg.fix), "--gradual prunes at topology updates, which --fix turns off; drop --fix"),
        (not cfg.init or not cfg.truly_sparse, "--init chooses masks of masked layers; drop --truly-sparse"),
        (not cfg.init or not cfg.fsdp, "--init scores whole weights, before any sharding; drop --fsdp"),
        (not (cfg.init or cfg.gradual) or not cfg.structure, "--structure draws its own masks; drop --init / --gradual"),
        (
            not cfg.gradual or cfg.density <= cfg.initial_density <= 1,
            f"--initial-density must be in [--density, 1] = [{cfg.density}, 1], got {cfg.initial_density}",
        ),
        (
            not cfg.gradual or 0 <= cfg.prune_start < (cfg.total_epochs if cfg.prune_end is None else cfg.prune_end) <= cfg.total_epochs,
            f"--prune-start and --prune-end must be epochs with 0 <= start < end <= {cfg.total_epochs}, got {cfg.prune_start} and {cfg.prune_end}",
        ),
        (
            not cfg.fsdp or not cfg.truly_sparse,
            "--fsdp shards masked layers; truly sparse layers keep positions FSDP cannot shard: drop --truly-sparse or --fsdp",
        ),
        (not cfg.fsdp or not cfg.structure, "--structure is not supported with --fsdp yet; train structured sparsity without --fsdp (DDP)"),
        (not cfg.fsdp or not cfg.l1, "--l1 is not supported with --fsdp; drop one of them"),
        (
            not cfg.truly_sparse or "momentum" not in (cfg.growth, cfg.redistribution),
            "--growth momentum and --redistribution momentum need dense gradient averages, which --truly-sparse never holds; "
            "use --growth gradient (RigL) or random (SET)",
        ),
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
