"""`itop train`'s one-call step for a truly sparse SET-MLP (`itop.train.fused_step`): autograd's
gradients, and runs that take the decisions of runs without it."""

import pytest
import torch
from torch import nn

import itop
from itop.models.set_mlp import SetMLP
from itop.sparse import chain, native
from itop.train import fused_step
from itop.train.fused_step import FusedStep

from .test_cli import records, run

pytestmark = pytest.mark.skipif(not native.AVAILABLE, reason="the step runs numba's kernels")


def truly_sparse_set_mlp(dense_last: bool, **options):
    torch.manual_seed(0)
    model = SetMLP(60, 5, hidden=[40, 30, 20], **options)
    itop.sparse.sparsify(model, 0.2, seed=3)
    if dense_last:  # as the SET presets' output layer, which their density leaves dense
        model.fc4 = nn.Linear(20, 5)
    return model


@pytest.mark.parametrize("short_indices", [True, False])  # 16-bit column indices, or the structure's 32-bit ones
@pytest.mark.parametrize(
    "dense_last, batch, parts", [(True, 1, 1), (True, 2, 1), (False, 1, 1), (False, 2, 1), (True, 2, 2), (False, 2, 3)]
)
def test_the_step_gives_autograd_s_loss_and_gradients(one_thread, monkeypatch, dense_last, batch, parts, short_indices):
    # several parts: each layer's rows split over numba's threads (3 parts on fewer threads too)
    monkeypatch.setattr(fused_step, "SHORT_INDEX_LIMIT", fused_step.SHORT_INDEX_LIMIT if short_indices else 0)
    monkeypatch.setattr(native, "configured_threads", lambda: parts)
    monkeypatch.setattr(native, "_pool", lambda threads: None)  # numba's pool as started: 3 parts on its threads
    model = truly_sparse_set_mlp(dense_last)
    step = FusedStep.for_model(model, "cross-entropy", 0.0, "none", 0.0)
    x, y = torch.randn(batch, 60), torch.randint(0, 5, (batch,))
    assert step.ready(x)
    loss, correct = step(x, y)
    fused = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    monkeypatch.setattr(chain, "usable", lambda layers, x: False)
    logits = model(x)
    expected = nn.functional.cross_entropy(logits, y)
    expected.backward()
    assert loss == pytest.approx(expected.item(), rel=1e-6) and correct == int((logits.argmax(1) == y).sum())
    for got, param in zip(fused, model.parameters()):
        torch.testing.assert_close(got, param.grad, rtol=1e-5, atol=1e-6)


def test_only_set_mlps_it_computes_exactly_get_one(one_thread):
    assert FusedStep.for_model(truly_sparse_set_mlp(True), "cross-entropy", 0.0, "none", 0.0) is not None
    assert FusedStep.for_model(truly_sparse_set_mlp(True, dropout=0.3), "cross-entropy", 0.0, "none", 0.0) is None
    assert FusedStep.for_model(truly_sparse_set_mlp(True, activation="srelu"), "cross-entropy", 0.0, "none", 0.0) is None
    model = truly_sparse_set_mlp(True)
    for loss, smoothing, amp, l1 in (("mse", 0.0, "none", 0.0), ("cross-entropy", 0.1, "none", 0.0), ("cross-entropy", 0.0, "bf16", 0.0)):
        assert FusedStep.for_model(model, loss, smoothing, amp, l1) is None
    assert FusedStep.for_model(model, "cross-entropy", 0.0, "none", 1e-5) is None
    assert FusedStep.for_model(nn.Sequential(*model.children()), "cross-entropy", 0.0, "none", 0.0) is None
    step = FusedStep.for_model(model, "cross-entropy", 0.0, "none", 0.0)
    assert not step.ready(torch.randn(4, 60))  # batches above 2 take autograd
    torch.set_num_threads(2)
    assert step.ready(torch.randn(2, 60))  # several threads: each layer in parts
    torch.set_num_threads(1)
    model.fc2._recorder = lambda *args: None  # RigL's recording steps take autograd
    assert not step.ready(torch.randn(2, 60))


TINY_BATCH_2 = [
    "--model",
    "set-mlp",
    "--data",
    "mnist5k",
    "--hidden",
    "32,24",
    "--sparse",
    "--truly-sparse",
    "--epsilon",
    "4",
    "--batch-size",
    "2",
    "--epochs",
    "1",
    "--update_frequency",
    "400",
    "--lr",
    "0.01",
    "--no-progress",
    "--seed",
    "5",
]


@pytest.mark.parametrize("growth", ["random", "gradient"])
def test_a_run_through_the_step_takes_the_decisions_of_a_run_without_it(capsys, monkeypatch, growth):
    calls = []
    original = FusedStep.__call__
    monkeypatch.setattr(FusedStep, "__call__", lambda self, x, y: calls.append(1) or original(self, x, y))
    argv = [*TINY_BATCH_2, "--growth", growth]
    assert run([*argv, "--save", "fused"], capsys)[0] == 0
    steps = 1800  # 3,600 training digits in batches of 2
    # one call at the start compiles the kernel; RigL's 4 recording steps (every 400) take autograd
    assert len(calls) == 1 + (steps if growth == "random" else steps - 4)
    monkeypatch.setattr(fused_step.FusedStep, "for_model", classmethod(lambda cls, *args: None))
    assert run([*argv, "--save", "autograd"], capsys)[0] == 0
    fused, plain = (torch.load(f"{d}/checkpoint.pt", weights_only=True)["model"] for d in ("fused", "autograd"))
    for name in ("fc1", "fc2"):
        assert torch.equal(fused[f"{name}.indices"], plain[f"{name}.indices"]), name
    for name, value in fused.items():
        torch.testing.assert_close(value, plain[name], rtol=1e-4, atol=1e-5)
    losses = [records(d, "epoch")[0]["train_loss"] for d in ("fused", "autograd")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)


def test_the_step_follows_weights_and_gradients_given_new_storage(one_thread, monkeypatch):
    """The kernel's numpy views are kept between steps; `p.data = ...` (the same Parameter, new
    storage) or a new `.grad` must still be what the next step reads and writes."""
    model = truly_sparse_set_mlp(True)
    step = FusedStep.for_model(model, "cross-entropy", 0.0, "none", 0.0)
    x, y = torch.randn(2, 60), torch.randint(0, 5, (2,))
    assert step.ready(x)
    step(x, y)
    model.fc1.values.data = model.fc1.values.data * 2
    model.fc4.weight.data = model.fc4.weight.data.flip(0).contiguous()
    model.fc3.values.grad = torch.full_like(model.fc3.values, float("nan"))
    loss, _ = step(x, y)
    fused = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    monkeypatch.setattr(chain, "usable", lambda layers, x, exact=True: False)
    expected = nn.functional.cross_entropy(model(x), y)
    expected.backward()
    assert loss == pytest.approx(expected.item(), rel=1e-6)
    for got, param in zip(fused, model.parameters()):
        torch.testing.assert_close(got, param.grad, rtol=1e-5, atol=1e-6)


def test_a_nan_weight_reaches_the_loss(one_thread):
    """The ReLU the forward applies as it writes each row keeps NaN (as torch.relu does), so a hidden
    layer gone NaN makes the loss NaN and `itop train` stops as diverged, rather than training on."""
    model = truly_sparse_set_mlp(True)
    step = FusedStep.for_model(model, "cross-entropy", 0.0, "none", 0.0)
    x, y = torch.randn(2, 60), torch.randint(0, 5, (2,))
    assert step.ready(x)
    with torch.no_grad():
        model.fc2.values.fill_(float("nan"))
    loss, _ = step(x, y)
    assert loss != loss  # NaN
