"""How kernels are chosen (`itop.sparse.dispatch`): forced modes take their path and compute the
same function; measured choices are probed once per shape class, then read from memory or from the
cache file; a broken cache and a spent probe budget cost nothing but speed."""

import copy
import json
import multiprocessing
import os
import time
import timeit

import pytest
import torch
from torch import nn

import itop
from itop.sparse import SparseLinear, dispatch, native, ops
from itop.sparse.structure import SparseStructure
from itop.sparsity import kernels

MODES = ["torch", "dense", "numba"]


@pytest.fixture(autouse=True)
def cache_dir(monkeypatch, tmp_path):
    """Every test gets its own cache directory and starts with no dispatcher."""
    monkeypatch.setenv("ITOP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("ITOP_KERNELS", raising=False)
    monkeypatch.delenv("ITOP_SPARSE_KERNELS", raising=False)
    monkeypatch.setattr(dispatch, "active", None)
    return tmp_path / "cache"


def use(monkeypatch, probe_small: bool = True, **options) -> dispatch.Dispatcher:
    """A fresh dispatcher; with `probe_small`, the small shapes of these tests are probed too."""
    chooser = dispatch.Dispatcher(**options)
    monkeypatch.setattr(dispatch, "active", chooser)
    if probe_small:
        monkeypatch.setattr(dispatch, "MIN_PROBE_WORK", 0)
        monkeypatch.setattr(kernels, "MIN_PROBE_CALL", 0)
    return chooser


def test_tiny_products_and_calls_take_the_fixed_rule_unprobed(monkeypatch):
    chooser = use(monkeypatch, probe_small=False)
    torch.manual_seed(5)
    layer = SparseLinear(120, 80, nnz=300)  # 300 x 32 rows: under MIN_PROBE_WORK
    layer(torch.randn(32, 120, requires_grad=True)).sum().backward()
    linear, mask = nn.Linear(300, 200), torch.rand(200, 300) < 0.05
    kernels.use_sparse(linear, mask)
    linear(torch.randn(8, 300)).sum().backward()  # 8 x 60,000: under MIN_PROBE_CALL
    assert chooser.probes == 0 and not chooser.decisions


def spy(monkeypatch):
    """Record which candidate each product ran, and which underlying kernels were called."""
    seen = {"how": [], "native": [], "dense": 0, "sparse_mm": 0}
    for name in ("_forward", "_input_grad", "_weight_grad"):
        original = getattr(ops, name)

        def wrapped(how, *args, _original=original, _name=name):
            seen["how"].append((_name, how))
            return _original(how, *args)

        monkeypatch.setattr(ops, name, wrapped)
    for name in ("forward", "input_grad", "input_grad_csc", "weight_grad"):
        original = getattr(native, name)

        def wrapped_native(*args, _original=original, _name=name):
            seen["native"].append(_name.removesuffix("_csc"))
            return _original(*args)

        monkeypatch.setattr(native, name, wrapped_native)
    fused = native.backward

    def counted_fused(*args):  # both gradients in one numba pass (batch 2): counted as both products
        seen["how"].extend([("_input_grad", "numba"), ("_weight_grad", "numba")])
        seen["native"].extend(["input_grad", "weight_grad"])
        return fused(*args)

    monkeypatch.setattr(native, "backward", counted_fused)
    dense_weight, sparse_mm = ops._dense_weight, torch.sparse.mm

    def counted_dense(*args):
        seen["dense"] += 1
        return dense_weight(*args)

    def counted_mm(*args):
        seen["sparse_mm"] += 1
        return sparse_mm(*args)

    monkeypatch.setattr(ops, "_dense_weight", counted_dense)
    monkeypatch.setattr(torch.sparse, "mm", counted_mm)
    return seen


def step_against_masked_dense(layer: SparseLinear, x: torch.Tensor, tol: float):
    """Forward and backward of `layer` and of its masked dense form: same outputs and gradients."""
    dense = layer.to_dense()
    x_sparse, x_dense = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, ref = layer(x_sparse), dense(x_dense)
    grad = torch.randn_like(ref)
    out.backward(grad)
    ref.backward(grad)
    close = dict(rtol=tol, atol=tol)
    torch.testing.assert_close(out, ref, **close)
    torch.testing.assert_close(x_sparse.grad, x_dense.grad, **close)
    torch.testing.assert_close(layer.values.grad, dense.weight.grad.reshape(-1)[layer.indices], **close)
    torch.testing.assert_close(layer.bias.grad, dense.bias.grad, **close)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("rows", [1, 2, 64])
def test_each_forced_mode_takes_its_path_and_matches_the_masked_dense_layer(monkeypatch, mode, rows):
    use(monkeypatch, mode=mode)
    seen = spy(monkeypatch)
    torch.manual_seed(0)
    layer = SparseLinear(90, 70, nnz=600).double()
    step_against_masked_dense(layer, torch.randn(rows, 90, dtype=torch.float64), 1e-10)
    hows = {how for _, how in seen["how"]}
    assert {name for name, _ in seen["how"]} == {"_forward", "_input_grad", "_weight_grad"}
    if mode == "torch" or (mode == "numba" and not native.AVAILABLE):
        assert hows == {"torch"} and not seen["native"] and not seen["dense"] and seen["sparse_mm"]
    elif mode == "numba":
        assert hows <= {"numba", "numba1", "csc", "csc1"} and set(seen["native"]) == {"forward", "input_grad", "weight_grad"}
        assert not seen["dense"] and not seen["sparse_mm"]
    else:
        assert hows == {"dense"} and seen["dense"] == 2 and not seen["native"] and not seen["sparse_mm"]


def test_dense_is_forced_only_where_the_dense_weight_may_exist(monkeypatch):
    use(monkeypatch, mode="dense")
    monkeypatch.setattr(dispatch, "DENSE_MAX_ELEMENTS", 90 * 70 - 1)
    seen = spy(monkeypatch)
    layer = SparseLinear(90, 70, nnz=600)
    layer(torch.randn(4, 90, requires_grad=True)).sum().backward()
    assert {how for _, how in seen["how"]} == {"torch"} and not seen["dense"]


@pytest.mark.parametrize("mode", MODES)
def test_the_masked_engine_swaps_as_each_mode_says(monkeypatch, mode):
    use(monkeypatch, mode=mode)
    torch.manual_seed(1)
    layer, mask = nn.Linear(200, 100), torch.rand(100, 200) < 0.05
    with torch.no_grad():
        layer.weight.mul_(mask)
    reference = nn.Linear(200, 100)
    reference.load_state_dict(layer.state_dict())
    swaps = kernels.pays_off(layer, mask, int(mask.sum()))
    assert swaps is (mode == "numba")
    if swaps:
        kernels.use_sparse(layer, mask)
    x = torch.randn(8, 200)
    out, ref = layer(x), reference(x)
    out.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    if swaps:  # numba: the sparse path on every call, whatever its size
        assert layer._itop_pattern.sampled_last
        torch.testing.assert_close(layer.weight.grad, reference.weight.grad * mask, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("rows", [1, 2, 9, 33])
def test_every_candidate_agrees_with_the_masked_dense_reference(dtype, rows):
    torch.manual_seed(2)
    shape = (70, 90)
    structure = ops.random_structure(shape, 900, torch.Generator().manual_seed(3))
    values = torch.randn(structure.nnz, dtype=dtype)
    weight = torch.zeros(shape, dtype=dtype).view(-1).index_copy_(0, structure.positions, values).view(shape)
    rows_t, grads_t, bias = torch.randn(90, rows, dtype=dtype), torch.randn(70, rows, dtype=dtype), torch.randn(70, dtype=dtype)
    expected = {
        "forward": weight @ rows_t + bias.unsqueeze(1),
        "input_grad": weight.t() @ grads_t,
        "weight_grad": (grads_t @ rows_t.t()).view(-1)[structure.positions],
    }
    for op in ops.OPS:
        names = ops.candidates(op, shape, dtype)
        assert names[0] == "torch" and "dense" in names and ("numba1" in names) is native.AVAILABLE
        for how in names:
            got = {
                "forward": lambda: ops._forward(how, structure, values, rows_t, bias),
                "input_grad": lambda: ops._input_grad(how, structure, values, grads_t),
                "weight_grad": lambda: ops._weight_grad(how, structure, grads_t, rows_t),
            }[op]()
            torch.testing.assert_close(got, expected[op], rtol=1e-5, atol=1e-5 * float(expected[op].abs().max()), msg=f"{op} {how}")


def test_auto_probes_once_per_class_then_reads_memory_then_the_file(monkeypatch, cache_dir):
    chooser = use(monkeypatch)
    assert chooser.mode == "auto" and chooser.path == cache_dir / "kernels.json"
    calls = []
    timings = ops.candidate_timings
    monkeypatch.setattr(ops, "candidate_timings", lambda *a: calls.append(a) or timings(*a))
    torch.manual_seed(4)
    layer = SparseLinear(120, 80, nnz=1000)
    for rows in (30, 31, 32, 30):  # one batch class (32)
        layer(torch.randn(rows, 120, requires_grad=True)).sum().backward()
    assert sorted(op for op, *_ in calls) == ["forward", "input_grad", "weight_grad"] and chooser.probes == 3
    key = ops.decision_key("forward", (80, 120), 1000, 30, torch.float32)
    assert chooser.decisions[key] in ops.candidates("forward", (80, 120), torch.float32)
    layer(torch.randn(2, 120, requires_grad=True)).sum().backward()  # another class: probed
    assert len(calls) == 6

    saved = json.loads((cache_dir / "kernels.json").read_text())
    (entry,) = saved["machines"].values()
    assert len(entry["decisions"]) == 6 and entry["machine"]["cpu"] and entry["machine"]["isa"]
    assert entry["decisions"][dispatch.encode(key)]["use"] == chooser.decisions[key]

    calls.clear()
    again = use(monkeypatch)  # a new process, as far as the dispatcher knows
    layer(torch.randn(32, 120, requires_grad=True)).sum().backward()
    assert not calls and again.probes == 0 and again.decisions[key] == chooser.decisions[key]


def test_the_masked_engine_probes_sparse_against_dense_once_per_class(monkeypatch):
    chooser = use(monkeypatch)
    calls = []
    timings = kernels.masked_timings
    monkeypatch.setattr(kernels, "masked_timings", lambda *a: calls.append(a) or timings(*a))
    torch.manual_seed(5)
    layer, mask = nn.Linear(300, 200), torch.rand(200, 300) < 0.05
    kernels.use_sparse(layer, mask)
    for _ in range(3):
        layer(torch.randn(16, 300)).sum().backward()
    assert len(calls) == 1
    key = kernels.decision_key((200, 300), int(mask.sum()), 16, True)
    assert chooser.decisions[key] in ("sparse", "dense")
    assert layer._itop_pattern.sampled_last is (chooser.decisions[key] == "sparse")
    with torch.no_grad():
        layer(torch.randn(16, 300))
    assert len(calls) == 2 and ("masked_eval", *key[1:]) in chooser.decisions


@pytest.mark.parametrize("mode", ["auto", "dense"])
def test_flop_counting_sees_no_probe_and_no_dense_product(monkeypatch, mode):
    chooser = use(monkeypatch, mode=mode)
    torch.manual_seed(7)
    dense = nn.Sequential(nn.Linear(40, 60))
    truly = itop.sparse.sparsify(copy.deepcopy(dense), 0.1, seed=0)
    x = torch.randn(3, 40)
    chooser.decisions[ops.decision_key("forward", (60, 40), truly[0].nnz, 3, torch.float32)] = "dense"  # measured so, say
    assert itop.flops.count_flops(truly, x) == itop.flops.count_flops(dense, x)
    assert chooser.probes == 0


def test_probing_leaves_the_global_random_state_alone():
    torch.manual_seed(6)
    expected = torch.rand(3)
    torch.manual_seed(6)
    ops.candidate_timings("weight_grad", (50, 60), 300, 4, torch.float32)
    kernels.masked_timings((100, 120), 600, 4)
    assert torch.equal(torch.rand(3), expected)


def test_a_corrupt_cache_is_rewritten_and_costs_only_the_probes(monkeypatch, cache_dir, capsys):
    cache_dir.mkdir()
    for junk in ("{not json", json.dumps({"format": 1, "machines": {"x": 3}}), json.dumps([1, 2]), "\x00\xff"):
        (cache_dir / "kernels.json").write_text(junk, encoding="latin-1")
        chooser = use(monkeypatch)
        layer = SparseLinear(40, 30, nnz=200)
        layer(torch.randn(3, 40, requires_grad=True)).sum().backward()
        assert chooser.probes == 3
        assert len(json.loads((cache_dir / "kernels.json").read_text())["machines"]) == 1
    assert capsys.readouterr() == ("", "")


def test_an_unwritable_cache_costs_only_the_probes(monkeypatch, tmp_path, capsys):
    (tmp_path / "a-file").write_text("")
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o500)
    try:
        for path in (tmp_path / "a-file" / "kernels.json", read_only / "kernels.json"):
            chooser = use(monkeypatch, path=path)
            layer = SparseLinear(40, 30, nnz=200)
            for _ in range(2):
                layer(torch.randn(3, 40, requires_grad=True)).sum().backward()
            assert chooser.probes == 3 and len(chooser.decisions) == 3
        assert not any(read_only.iterdir()) or os.geteuid() == 0  # root writes anyway
    finally:
        read_only.chmod(0o700)
    assert capsys.readouterr() == ("", "")


def test_the_probe_budget_is_respected(monkeypatch):
    chooser = use(monkeypatch, budget=0.05)
    chooser._machine = {"cpu": "test"}

    def slow_probe():
        time.sleep(0.02)
        return {"fast": 1.0, "slow": 2.0}

    got = [chooser.decide(("op", i, 1, 1, 1, torch.float32, 1), slow_probe, lambda: "fixed") for i in range(6)]
    probed = chooser.probes  # 0.05 s of 0.02 s probes: 3, or 2 where sleeping overshoots
    assert 2 <= probed <= 3 and got == ["fast"] * probed + ["fixed"] * (6 - probed) and chooser.budget_left <= 0
    spent = use(monkeypatch, budget=0)
    layer = SparseLinear(40, 30, nnz=200)
    layer(torch.randn(3, 40, requires_grad=True)).sum().backward()
    assert spent.probes == 0 and not spent.decisions  # the fixed rule, not remembered


def test_a_nested_probe_is_charged_once(monkeypatch):
    chooser = use(monkeypatch, budget=1.0)
    chooser._machine = {"cpu": "test"}

    def outer():
        chooser.decide(("inner", 1, 1, 1, 1, torch.float32, 1), lambda: time.sleep(0.1) or {"a": 1.0}, lambda: "fixed")
        return {"b": 1.0}

    chooser.decide(("outer", 1, 1, 1, 1, torch.float32, 1), outer, lambda: "fixed")
    assert 0.85 < chooser.budget_left < 0.9 + 1e-3


def test_a_first_call_is_charged_as_a_timed_one(monkeypatch):
    """A candidate's first call (where numba compiles or loads its kernel) is charged to the budget as
    long as one of its timed calls, not more."""
    chooser = use(monkeypatch, budget=1.0)
    chooser._machine = {"cpu": "test"}
    calls = []

    def candidate():  # 0.3 s the first time, as a compile would take, then 5 ms
        time.sleep(0.3 if not calls else 0.005)
        calls.append(1)

    choice = chooser.decide(("op", 1, 1, 1, 1, torch.float32, 1), lambda: dispatch.time_candidates({"a": candidate}), lambda: "fixed")
    assert choice == "a" and len(calls) == 4  # a warm-up call, then three timed rounds
    assert 0.95 < chooser.budget_left < 0.985  # four 5 ms calls and the gaps, not the 0.3 s


def write_decisions(path, worker):
    chooser = dispatch.Dispatcher(mode="auto", path=path)
    chooser._machine = {"cpu": "test"}
    for i in range(15):
        key = ("forward", worker, i, 1, 1, torch.float32, 1)
        chooser.decisions[key], chooser.timings[key] = "torch", {"torch": 1e-6}
        chooser.save()


def test_processes_writing_at_once_merge_into_one_whole_file(tmp_path):
    path = tmp_path / "kernels.json"
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=write_decisions, args=(path, w)) for w in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    (entry,) = json.loads(path.read_text())["machines"].values()
    assert len(entry["decisions"]) == 60
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_an_unknown_mode_is_refused_in_one_line_on_first_use(monkeypatch):
    monkeypatch.setenv("ITOP_KERNELS", "fast")
    layer = SparseLinear(40, 30, nnz=200)  # building a layer computes nothing
    with pytest.raises(ValueError) as error:
        layer(torch.randn(3, 40))
    message = str(error.value)
    assert "\n" not in message and "ITOP_KERNELS='fast'" in message and "auto, torch, numba, dense" in message
    assert dispatch.active is None
    with pytest.raises(ValueError, match="ITOP_KERNELS"):
        dispatch.Dispatcher(mode="fast")


@pytest.mark.parametrize(
    "environ, mode",
    [
        ({}, "auto"),
        ({"ITOP_KERNELS": " Dense "}, "dense"),
        ({"ITOP_SPARSE_KERNELS": "torch"}, "torch"),
        ({"ITOP_SPARSE_KERNELS": "torch", "ITOP_KERNELS": "numba"}, "numba"),
        ({"ITOP_SPARSE_KERNELS": "other"}, "auto"),
    ],
)
def test_the_mode_and_its_old_name(environ, mode):
    assert dispatch.read_mode(environ) == mode


def test_where_the_cache_lives(tmp_path):
    home = os.path.expanduser("~")
    assert dispatch.cache_dir({"ITOP_CACHE_DIR": str(tmp_path)}) == tmp_path
    assert dispatch.cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "itop"
    assert str(dispatch.cache_dir({})) == os.path.join(home, ".cache", "itop")


def test_keys_survive_the_file():
    key = ("input_grad", 1024, 3072, 18, 128, torch.float64, 2)
    assert dispatch.decode(dispatch.encode(key)) == key
    for junk in ("", "a|b", "forward|1|2|3|4|notadtype|2", "forward|x|2|3|4|float32|2", None):
        assert dispatch.decode(junk) is None


def test_a_cached_decision_costs_a_few_microseconds_per_call_at_most(monkeypatch):
    use(monkeypatch)
    structure = SparseStructure(torch.arange(0, 5000, 7), (50, 100))
    x = torch.randn(100, 16)
    ops.choose("forward", structure, 16, x)
    lookup = timeit.repeat(lambda: ops.choose("forward", structure, 16, x), number=2000, repeat=5)
    assert min(lookup) / 2000 < 5e-6  # seconds per call, best of five (about 1 us on a 2-core Xeon)


def test_tiny_products_run_on_the_calling_thread_where_numba_runs():
    """Under native.PARALLEL_MIN_WORK multiply-adds no pool is woken: numba's serial kernels, the
    input gradient through the transposed CSR where the scatter would have per-thread buffers to sum."""
    probe = torch.empty(0)
    for op in ops.OPS:
        how = ops.fixed_rule(op, (1000, 1000), 20_000, 2, probe)
        scatter_pays = native.AVAILABLE and native.configured_threads() == 1
        expected = ("numba1" if op != "input_grad" or scatter_pays else "csc1") if native.AVAILABLE else "torch"
        assert how == expected, op


@pytest.mark.parametrize("rows", [1, 2, 3, 9])
def test_the_forward_without_bias_on_every_candidate(rows):
    shape = (40, 50)
    structure = ops.random_structure(shape, 300, torch.Generator().manual_seed(4))
    values = torch.randn(structure.nnz)
    weight = torch.zeros(shape).view(-1).index_copy_(0, structure.positions, values).view(shape)
    rows_t = torch.randn(50, rows)
    for how in ops.candidates("forward", shape, torch.float32):
        torch.testing.assert_close(ops._forward(how, structure, values, rows_t, None), weight @ rows_t, rtol=1e-5, atol=1e-5, msg=how)


def test_a_distributed_run_never_probes_and_takes_the_cache_else_the_rule(monkeypatch, tmp_path):
    """Ranks timing their own probes could choose, and round, differently: under a process group of
    more than one process each class takes the cache file's decision, else the fixed rule."""
    chooser = use(monkeypatch, path=tmp_path / "kernels.json")
    monkeypatch.setattr(dispatch, "distributed", lambda: True)
    probe = lambda: pytest.fail("a distributed run probed")  # noqa: E731
    assert chooser.decide(("forward", 1), probe, lambda: "torch") == "torch"
    assert chooser.decisions[("forward", 1)] == "torch" and chooser.probes == 0
    chooser.decisions[("forward", 2)] = "numba"  # as read from the cache
    assert chooser.decide(("forward", 2), probe, lambda: "torch") == "numba"
    torch.manual_seed(6)
    layer = SparseLinear(120, 80, nnz=3000)
    step_against_masked_dense(layer, torch.randn(32, 120), 1e-4)
    assert chooser.probes == 0


def test_the_cache_key_holds_a_digest_of_the_kernels_code(monkeypatch, tmp_path):
    """Choices timed on other kernels (a checkout changed under the same version) are not reused."""
    digest = dispatch.machine()["kernels"]
    assert len(digest) == 12 and int(digest, 16) >= 0 and dispatch.kernels_digest() == digest
    chooser = dispatch.Dispatcher(path=tmp_path / "kernels.json")
    chooser.decide(("forward", 1, 1, 1, 1, torch.float32, 1), lambda: {"torch": 1.0}, lambda: "numba")
    monkeypatch.setattr(dispatch, "kernels_digest", lambda: "0" * 12)
    other = dispatch.Dispatcher(path=tmp_path / "kernels.json")
    other.load()
    assert not other.decisions


@pytest.mark.skipif(not native.AVAILABLE, reason="numba is not installed")
def test_transposing_copies_are_measured_once_per_class_and_every_way_is_exact(monkeypatch, cache_dir):
    """Which sweep of numba's transpose wins depends on the CPU (bands on a Xeon, blocks on an AMD
    EPYC, for a batch of 3072-wide inputs), so it is measured like the products; forced modes
    take the fixed rule (numba) or PyTorch's copy (torch, dense)."""
    chooser = use(monkeypatch)
    calls = []
    timings = ops.transpose_timings
    monkeypatch.setattr(ops, "transpose_timings", lambda *a: calls.append(a) or timings(*a))
    matrix = torch.randn(100, 784)  # LeNet-300-100's batch of inputs: over NATIVE_TRANSPOSE_MIN_SIZE
    for rows in (100, 120, 128):  # one batch class (128)
        flipped = ops.transposed(torch.randn(rows, 784))
        assert flipped.shape == (784, rows) and flipped.is_contiguous()
    key = ("transpose", 128, 784, torch.float32, torch.get_num_threads())
    assert calls == [(100, 784, torch.float32)] and chooser.decisions[key] in ("bands", "blocks", "torch")
    assert set(chooser.timings[key]) == {"bands", "blocks", "torch"}
    assert dispatch.encode(key) in json.loads((cache_dir / "kernels.json").read_text())["machines"].popitem()[1]["decisions"]
    for way in ("bands", "blocks", "torch"):
        chooser.decisions[key] = way
        assert torch.equal(ops.transposed(matrix), matrix.t())
    assert ops.transpose_way(matrix) == "torch"  # the decision in memory serves every later call
    for mode, expected in (("numba", native.transpose_rule(100, 784)), ("torch", "torch"), ("dense", "torch")):
        use(monkeypatch, mode=mode)
        assert ops.transpose_way(matrix) == expected
        assert torch.equal(ops.transposed(matrix), matrix.t())
    assert len(calls) == 1
