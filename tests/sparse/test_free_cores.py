"""The cores other processes leave free (`itop.sparse.free_cores`), kernels run by fewer threads
with the same numbers, and an optimizer step on the free cores."""

import pytest
import torch

from itop.sparse import free_cores, native


@pytest.fixture
def machine(monkeypatch):
    """Two CPUs whose busy seconds, this process's CPU seconds and the clock the test sets."""
    now = {"wall": 100.0, "busy": 1000.0, "own": 10.0}
    monkeypatch.setattr(free_cores, "_cpus", lambda: {0, 1})
    monkeypatch.setattr(free_cores, "_busy_seconds", lambda cpus: now["busy"])
    monkeypatch.setattr(free_cores.time, "process_time", lambda: now["own"])
    monkeypatch.setattr(free_cores.time, "monotonic", lambda: now["wall"])
    monkeypatch.setattr(free_cores, "_enabled", True)
    monkeypatch.setattr(free_cores, "_last", None)
    monkeypatch.setattr(free_cores, "_free", None)

    def advance(seconds: float, own_cores: float, other_cores: float) -> None:
        now["wall"] += seconds
        now["own"] += own_cores * seconds
        now["busy"] += (own_cores + other_cores) * seconds

    return advance


@pytest.mark.parametrize("others, expected", [(0.0, 2), (0.4, 2), (0.6, 1), (1.0, 1), (1.9, 1)])
def test_another_process_using_more_than_half_a_core_takes_it(machine, others, expected):
    assert free_cores.free(2) == 2  # the first reading has nothing to compare with
    machine(0.2, own_cores=1.5, other_cores=others)
    assert free_cores.free(2) == expected
    assert free_cores.free(1) == 1


def test_the_reading_is_kept_for_an_interval_then_renewed(machine):
    free_cores.free(2)
    machine(0.2, own_cores=1.0, other_cores=1.0)
    assert free_cores.free(2) == 1
    machine(free_cores.INTERVAL / 2, own_cores=2.0, other_cores=0.0)
    assert free_cores.free(2) == 1  # within the interval: the last reading
    machine(free_cores.INTERVAL, own_cores=2.0, other_cores=0.0)
    assert free_cores.free(2) == 2


def test_without_proc_stat_or_when_turned_off_every_core_is_free(machine, monkeypatch):
    free_cores.free(2)
    machine(0.2, own_cores=0.0, other_cores=2.0)
    monkeypatch.setattr(free_cores, "_enabled", False)
    assert free_cores.free(2) == 2
    monkeypatch.setattr(free_cores, "_enabled", True)
    monkeypatch.setattr(free_cores, "_busy_seconds", lambda cpus: None)
    assert free_cores.free(2) == 2


def test_this_machine_s_reading_is_a_number_of_cores():
    busy = free_cores._busy_seconds(free_cores._cpus())
    assert busy is None or busy > 0
    assert 1 <= free_cores.free(2) <= 2


@pytest.mark.skipif(not native.AVAILABLE, reason="numba is not installed")
@pytest.mark.parametrize("batch", [2, 16])
def test_kernels_run_by_fewer_threads_give_the_same_numbers(monkeypatch, batch):
    """The parts stay those of the configured threads; only how many threads run them changes."""
    from itop.sparse import SparseLinear

    numba = native.kernels().numba
    torch.manual_seed(4)
    layer = SparseLinear(300, 200, nnz=6_000)
    crow, col = layer.structure.arrays()
    values = layer.values.detach()
    rows_t, grads_t = torch.randn(300, batch), torch.randn(200, batch)
    results = []
    for threads in (2, 1):
        monkeypatch.setattr(free_cores, "free", lambda wanted, threads=threads: min(wanted, threads))
        results.append(
            (
                native.forward(crow, col, values, rows_t, layer.bias, threads=2),
                native.weight_grad(crow, col, grads_t, rows_t, 2),
                native.input_grad(crow, col, values, grads_t, 300, 2),
            )
        )
        assert numba.get_num_threads() == min(threads, numba.config.NUMBA_NUM_THREADS)
    for two, one in zip(*results):
        assert torch.equal(two, one)


def test_an_optimizer_step_runs_on_the_free_cores_and_the_thread_count_comes_back(monkeypatch):
    before, cpu = torch.get_num_threads(), torch.device("cpu")
    torch.set_num_threads(2)
    try:
        monkeypatch.setattr(free_cores, "free", lambda threads: 1)  # another process holds one of two cores
        with free_cores.optimizer_threads(cpu):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        try:
            with free_cores.optimizer_threads(cpu):
                raise KeyError("stop")
        except KeyError:
            pass
        assert torch.get_num_threads() == 2
        with free_cores.optimizer_threads("cuda"):  # a GPU's update uses no CPU threads
            assert torch.get_num_threads() == 2
        monkeypatch.setattr(free_cores, "free", lambda threads: threads)
        with free_cores.optimizer_threads(cpu):
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
