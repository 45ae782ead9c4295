"""The thread count of a run: one thread for tiny steps on the CPU, PyTorch's otherwise, restored after."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from itop.train import threads as run_threads


def model_of(params: int) -> nn.Module:
    return nn.Linear(params - 1, 1)  # params - 1 weights and one bias


def test_tiny_steps_train_on_one_thread_and_larger_ones_keep_pytorchs(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    cpu = torch.device("cpu")
    tiny = 73_000  # SET's recipe at H=1,000: batch 2 x 73,000 parameters
    assert run_threads.step_threads(model_of(tiny), 2, cpu) == 1
    assert run_threads.step_threads(model_of(620_000), 2, cpu) is None  # H=10,000: two threads win
    assert run_threads.step_threads(model_of(tiny), 128, cpu) is None  # batch 128: the step is large
    assert "1 CPU thread" in run_threads.threads_note(1, model_of(tiny), 2)
    assert run_threads.threads_note(None, model_of(tiny), 2) is None


def test_the_users_choice_and_other_devices_are_left_alone(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert run_threads.step_threads(model_of(1000), 2, torch.device("cpu")) is None
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert run_threads.step_threads(model_of(1000), 2, torch.device("cuda")) is None
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert run_threads.step_threads(model_of(1000), 2, torch.device("cpu")) is None


def test_the_thread_count_is_restored_after_training_even_on_an_error():
    before = torch.get_num_threads()
    with run_threads.using_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    try:
        with run_threads.using_threads(1):
            raise KeyError("stop")
    except KeyError:
        pass
    assert torch.get_num_threads() == before
    with run_threads.using_threads(None):
        assert torch.get_num_threads() == before


def test_the_update_runs_on_the_free_cores_and_the_thread_count_comes_back(monkeypatch):
    from itop.sparse import free_cores

    torch.set_num_threads(2)
    cpu = torch.device("cpu")
    try:
        monkeypatch.setattr(free_cores, "free", lambda threads: 1)  # another process holds one of two cores
        with run_threads.update_threads(cpu):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        try:
            with run_threads.update_threads(cpu):
                raise KeyError("stop")
        except KeyError:
            pass
        assert torch.get_num_threads() == 2
        with run_threads.update_threads(torch.device("cuda")):  # a GPU's update uses no CPU threads
            assert torch.get_num_threads() == 2
        monkeypatch.setattr(free_cores, "free", lambda threads: threads)
        with run_threads.update_threads(cpu):
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(2)


@pytest.mark.parametrize("optimizer, fsdp", [("sgd", False), ("sgd", True), ("adam", False)])
def test_the_optimizers_of_a_run_give_the_same_numbers_on_one_thread_and_two(optimizer, fsdp):
    """What lets `update_threads` change the thread count mid-run: the update is elementwise, and
    PyTorch computes each element alike however it splits them among threads."""
    from itop.train.config import parse_args
    from itop.train.optim import build_optimizer

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
