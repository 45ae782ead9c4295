import pytest

from itop.train.config import UsageError, parse_args
from itop.train.optim import learning_rate

SEED_COMMON = (
    "--seed 18 --sparse_init ERK --lr 0.1 --density 0.05 --epochs 250 --model vgg-c --data cifar10 "
    "--decay_frequency 30000 --batch-size 128 --death magnitude --redistribution none"
)
SEED_COMMANDS = {
    "Dense": f"{SEED_COMMON} --multiplier 1 --update_frequency 1500 --growth random",
    "SET-ITOP": f"--sparse {SEED_COMMON} --multiplier 1 --update_frequency 1500 --growth random",
    "RigL-ITOP": f"--sparse {SEED_COMMON} --multiplier 1 --update_frequency 4000 --growth gradient",
    "SET-ITOP (5 times)": f"--sparse {SEED_COMMON} --multiplier 5 --update_frequency 1500 --growth random",
    "RigL-ITOP (5 times)": f"--sparse {SEED_COMMON} --multiplier 5 --update_frequency 4000 --growth gradient",
}


@pytest.mark.parametrize("method, command", SEED_COMMANDS.items())
def test_seed_readme_commands_parse_to_the_intended_run(method, command):
    cfg, resume = parse_args(command.split())
    assert resume is None and cfg.method == method
    assert (cfg.model, cfg.data, cfg.density, cfg.sparse_init, cfg.batch_size, cfg.seed) == ("vgg-c", "cifar10", 0.05, "ERK", 128, 18)
    assert cfg.sparse == (method != "Dense") and cfg.death == "magnitude" and cfg.lr_schedule == "multistep"
    assert cfg.total_epochs == 250 * cfg.multiplier and cfg.weight_decay == 5e-4 and cfg.nesterov
    assert cfg.growth == ("gradient" if "RigL" in method else "random")


def test_both_spellings_of_sparse_init():
    a, _ = parse_args("--model lenet5 --sparse_init uniform".split())
    b, _ = parse_args("--model lenet5 --sparse-init uniform".split())
    assert a.sparse_init == b.sparse_init == "uniform"


def test_no_flags_is_the_demo_preset():
    cfg, _ = parse_args([])
    assert (cfg.model, cfg.data, cfg.sparse, cfg.growth, cfg.density, cfg.method) == (
        "lenet300-100",
        "mnist5k",
        True,
        "gradient",
        0.05,
        "RigL-ITOP",
    )


def test_original_defaults_when_flags_are_given():
    cfg, _ = parse_args(["--model", "lenet5"])
    assert (cfg.data, cfg.sparse, cfg.epochs, cfg.batch_size, cfg.density, cfg.update_frequency, cfg.seed, cfg.valid_split) == (
        "mnist",
        False,
        250,
        100,
        0.05,
        100,
        17,
        0.1,
    )


def test_seed_imagenet_command_parses():
    argv = (
        "--multiplier 1 --growth gradient --master_port 4545 -j5 -p 500 --arch resnet50 -c fanin --update_frequency 4000 "
        "--label-smoothing 0.1 -b 64 --lr 0.1 --warmup 5 --epochs 100 --density 0.2 /data/imagenet --save save/ITOP/"
    ).split()
    cfg, _ = parse_args(argv)
    assert cfg.imagenet and cfg.sparse and cfg.data == "imagenet" and cfg.data_dir == "/data/imagenet"
    assert (cfg.model, cfg.model_config, cfg.workers, cfg.log_interval, cfg.batch_size, cfg.warmup) == (
        "imagenet-resnet50",
        "fanin",
        5,
        500,
        64,
        5,
    )
    assert (cfg.density, cfg.sparse_init, cfg.nesterov, cfg.weight_decay, cfg.bn_weight_decay, cfg.label_smoothing) == (
        0.2,
        "ER",
        False,
        1e-4,
        False,
        0.1,
    )
    assert cfg.method == "RigL-ITOP" and cfg.lr_schedule == "imagenet-step"
    assert parse_args(["--dense"] + argv)[0].sparse is False


@pytest.mark.parametrize(
    "argv, message",
    [
        ("--model vgg-z", "unknown model 'vgg-z'"),
        ("--model lenet5 --data svhn", "unknown dataset 'svhn'"),
        ("--model lenet5 --growth rigl", "--growth must be random, gradient, momentum or none"),
        ("--model lenet5 --death biggest", "--death must be magnitude, SET or threshold"),
        ("--model lenet5 --density 0", "--density must be in (0, 1]"),
        ("--model lenet5 --density 1.5", "--density must be in (0, 1]"),
        ("--model lenet5 --frobnicate", "unrecognized arguments: --frobnicate"),
        ("--model lenet5 --epochs ten", "invalid int value"),
        ("--data mnist", "--model is required"),
        ("--model lenet5 --sparse --structure 2-4", "--structure must be None, 'fan-in' or 'N:M'"),
        ("--model lenet5 --sparse --structure 2:4 --density 0.1", "--structure 2:4 sets the density of the sparse layers to 2/4"),
        ("--model lenet5 --sparse --ablation", "--ablation is SRigL's neuron ablation for --structure fan-in"),
        ("--model lenet5 --sparse --structure 2:4 --ablation", "--ablation works with structure='fan-in' only"),
        ("--model lenet5 --structure fan-in", "--structure fan-in shapes the sparse layers' masks; add --sparse"),
        ("--model lenet5 --sparse --truly-sparse --structure fan-in", "--structure trains masked layers; drop --truly-sparse"),
        ("--model lenet5 --sparse --structure fan-in --redistribution momentum", "use --redistribution none"),
        ("--model lenet5 --sparse --structure fan-in --growth none", "choose --growth random, gradient or momentum"),
    ],
)
def test_bad_flags(argv, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_args(argv.split())


def test_learning_rate_schedules():
    cfg, _ = parse_args("--model lenet5 --epochs 250".split())
    assert [learning_rate(cfg, e, 0, 1) for e in (0, 124, 125, 186, 187, 249)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    cfg, _ = parse_args("--model lenet5 --epochs 250 --multiplier 5".split())
    assert [learning_rate(cfg, e, 0, 1) for e in (624, 625, 934, 935)] == pytest.approx([0.1, 0.01, 0.01, 0.001])
    cfg, _ = parse_args("--model lenet5 --lr-schedule step --decay_frequency 30000".split())
    assert [learning_rate(cfg, 0, s, 1) for s in (29_999, 30_000, 60_000)] == pytest.approx([0.1, 0.01, 0.001])
    cfg, _ = parse_args("--model lenet5 --lr-schedule step --decay_frequency 30000 --multiplier 2".split())
    assert [learning_rate(cfg, 0, s, 1) for s in (59_999, 60_000, 120_000)] == pytest.approx([0.1, 0.01, 0.001])
    cfg, _ = parse_args("--arch resnet50 --warmup 5 --epochs 100 /data".split())
    assert [learning_rate(cfg, e, 0, 1) for e in (0, 4, 5, 30, 60, 90)] == pytest.approx([0.1 / 6, 0.5 / 6, 0.1, 0.01, 0.001, 0.0001])
    cfg, _ = parse_args("--model lenet5 --lr-schedule constant --epochs 1000 --lr 0.01".split())
    assert {learning_rate(cfg, e, s, 10**6) for e, s in ((0, 0), (500, 10**5), (999, 10**6))} == {0.01}


def test_flags_without_a_model_or_dataset_change_the_demo():
    cfg, _ = parse_args(["--epochs", "5"])
    assert (cfg.model, cfg.data, cfg.sparse, cfg.growth, cfg.density, cfg.epochs) == ("lenet300-100", "mnist5k", True, "gradient", 0.05, 5)
    cfg, _ = parse_args(["--density", "0.02", "--save", "runs/x"])
    assert cfg.density == 0.02 and cfg.save == "runs/x" and cfg.sparse and cfg.model == "lenet300-100"
    cfg, _ = parse_args(["--growth", "random", "--fix"])
    assert cfg.method == "Static" and cfg.data == "mnist5k"
    assert not parse_args(["--dense", "--epochs", "2"])[0].sparse


@pytest.mark.parametrize(
    "argv", [["--model", "lenet5"], ["--model", "lenet5", "--data", "mnist5k"], ["--arch", "resnet18", "--dense", "/d"]]
)
def test_naming_a_model_or_dataset_gives_the_originals_semantics(argv):
    cfg, _ = parse_args(argv)
    assert not cfg.sparse and cfg.method == "Dense" and cfg.epochs != 100


@pytest.mark.parametrize(
    "argv, data",
    [
        (["--model", "set-mlp", "--sparse"], "mnist5k"),  # the SET-MLP, not a model of the original main.py: the embedded digits
        (["--model", "set-mlp", "--data", "mnist"], "mnist"),
        (["--preset", "set-mlp-fashion"], "fashion-mnist"),
        (["--model", "lenet5"], "mnist"),  # the original main.py's default
    ],
)
def test_the_default_dataset_of_a_command_line_that_names_a_model(argv, data):
    assert parse_args(argv)[0].data == data


def test_structure_flags():
    cfg, _ = parse_args("--model lenet5 --sparse --growth gradient --structure FAN-IN --ablation".split())
    assert (cfg.structure, cfg.ablation, cfg.density, cfg.method) == ("fan-in", True, 0.05, "RigL-ITOP fan-in+ablation")
    cfg, _ = parse_args("--model lenet5 --sparse --structure 1:4 --multiplier 2".split())
    assert (cfg.structure, cfg.density, cfg.method) == ("1:4", 0.25, "SET-ITOP 1:4 (2 times)")
