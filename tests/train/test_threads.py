"""The thread count of a run: one thread for tiny steps on the CPU, PyTorch's otherwise, restored after."""

from __future__ import annotations

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
