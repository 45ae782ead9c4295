"""The learning-rate schedule: the original ITOP code's milestones for runs long enough to have
them, decays by optimizer steps for shorter runs, and the one-line description a run prints; the
optimizers' numbers on one thread and two."""

import pytest
import torch
from torch import nn

from itop.train.config import parse_args
from itop.train.optim import build_optimizer, describe_schedule, learning_rate, multistep_milestones

STEPS_PER_EPOCH = 36  # the demo's: 3,600 training digits in batches of 100


def demo(*flags):
    return parse_args(list(flags))[0]


def rates(cfg, steps_per_epoch=STEPS_PER_EPOCH):
    """The LR of every optimizer step of the run, as the training loop asks for it."""
    total = steps_per_epoch * cfg.total_epochs
    return [learning_rate(cfg, step // steps_per_epoch, step, total) for step in range(total)]


@pytest.mark.parametrize("epochs", [1, 2, 3, 4])
def test_short_runs_start_at_the_base_rate_and_decay_twice_late_enough(epochs):
    cfg = demo("--epochs", str(epochs))
    lrs = rates(cfg)
    assert lrs[0] == cfg.lr  # the original's milestones at epoch 0 trained a 1-epoch run at lr / 100 throughout
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] == pytest.approx(cfg.lr / 100)
    assert len({round(lr, 12) for lr in lrs}) == 3  # both decays happen, one after the other
    first_decay = next(step for step, lr in enumerate(lrs) if lr < cfg.lr)
    if epochs == 1:
        assert first_decay == STEPS_PER_EPOCH // 2  # by steps: half the run at the base rate
    else:
        assert first_decay >= STEPS_PER_EPOCH  # never within the first epoch


@pytest.mark.parametrize(
    "epochs, multiplier, expected",
    [
        (1, 1, ("steps", (18, 27))),
        (2, 1, ("steps", (36, 54))),
        (1, 3, ("steps", (54, 81))),
        (2, 2, ("steps", (72, 108))),
        (3, 1, ("epochs", (1, 2))),
        (4, 1, ("epochs", (2, 3))),
        (3, 2, ("epochs", (2, 4))),
    ],
)
def test_milestones_by_steps_only_where_epoch_milestones_fall_in_the_first_epoch_or_coincide(epochs, multiplier, expected):
    cfg = demo("--epochs", str(epochs), "--multiplier", str(multiplier))
    assert multistep_milestones(cfg, STEPS_PER_EPOCH * cfg.total_epochs) == expected


@pytest.mark.parametrize("multiplier", [1, 2, 5])
def test_long_runs_keep_the_original_milestones(multiplier):
    for epochs in range(3, 301):
        cfg = demo("--epochs", str(epochs), "--multiplier", str(multiplier))
        original = (int(epochs / 2) * multiplier, int(epochs * 3 / 4) * multiplier)
        assert multistep_milestones(cfg, 391 * cfg.total_epochs) == ("epochs", original)
    cfg, _ = parse_args("--model vgg-c --data cifar10 --epochs 250".split())
    lrs = [learning_rate(cfg, e, 391 * e, 391 * 250) for e in (0, 124, 125, 186, 187, 249)]
    assert lrs == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


@pytest.mark.parametrize(
    "flags, total_steps, text",
    [
        (["--epochs", "10"], 360, "lr 0.1, x0.1 after epochs 5 and 7"),
        (["--epochs", "1"], 36, "lr 0.1, x0.1 after steps 18 and 27"),
        (["--epochs", "1", "--lr-schedule", "constant", "--lr", "0.05"], 36, "lr 0.05 constant"),
        (["--epochs", "1", "--lr-schedule", "cosine"], 36, "lr 0.1, cosine to 0 over 36 steps"),
        (
            ["--epochs", "1", "--lr-schedule", "step", "--decay_frequency", "30000", "--multiplier", "2"],
            72,
            "lr 0.1, x0.1 every 60000 steps",
        ),
        (["--arch", "resnet50", "--warmup", "5", "/data"], 10**5, "lr 0.1 after 5 warm-up epochs, x0.1 after epochs 30, 60 and 90"),
    ],
)
def test_the_schedule_described_for_the_first_line(flags, total_steps, text):
    assert describe_schedule(demo(*flags), total_steps) == text


@pytest.mark.parametrize("optimizer, fsdp", [("sgd", False), ("sgd", True), ("adam", False)])
def test_the_optimizers_of_a_run_give_the_same_numbers_on_one_thread_and_two(optimizer, fsdp):
    """What lets `itop train` run the step on fewer threads while other processes keep cores busy
    (`free_cores.optimizer_threads`): the update is elementwise, and PyTorch computes each element
    alike however it splits them among threads."""
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            cfg = parse_args(["--model", "lenet300-100", "--data", "mnist", "--optimizer", optimizer])[0]
            cfg.fsdp = fsdp  # FSDP's optimizer is SGD with foreach=True; it steps plain tensors here alike
            generator = torch.Generator().manual_seed(0)
            model = nn.Sequential(nn.Linear(999, 301), nn.BatchNorm1d(301), nn.Linear(301, 7))
            with torch.no_grad():
                for param in model.parameters():
                    param.copy_(torch.randn(param.shape, generator=generator))
            opt = build_optimizer(cfg, model)
            for _ in range(4):
                for param in model.parameters():
                    param.grad = torch.randn(param.shape, generator=generator)
                opt.step()
            results.append([p.detach().clone() for p in model.parameters()])
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(one, two) for one, two in zip(*results))
