"""Argument checks of sparsify, export and densify: one-line messages naming the argument."""

import copy

import pytest
import torch
from torch import nn

import itop
from itop.sparse import densify, export, sparsify


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(20, 20), nn.ReLU(), nn.Linear(20, 4))


def masked(model: nn.Module) -> itop.Sparsifier:
    return itop.Sparsifier(model, torch.optim.SGD(model.parameters(), lr=0.1), density=0.3, seed=0)


@pytest.mark.parametrize(
    "sparsifier", [None, "sparsifier", torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)], ids=["None", "str", "optimizer"]
)
def test_export_needs_the_sparsifier(sparsifier):
    with pytest.raises(
        TypeError,
        match=r"^export\(model, sparsifier\): sparsifier must be the itop.Sparsifier "
        r"that trained the model, got (None|str|SGD)\.$",
    ):
        export(mlp(), sparsifier)


def test_export_with_swapped_arguments_names_the_model():
    model = mlp()
    with pytest.raises(TypeError, match=r"^export\(model, sparsifier\): model must be a torch.nn.Module, got Sparsifier\.$"):
        export(masked(model), model)


def test_export_of_another_model_than_the_sparsifiers():
    model = mlp()
    sparsifier = masked(model)
    with pytest.raises(ValueError, match="the sparsifier was built on another model"):
        export(copy.deepcopy(model), sparsifier)
    assert isinstance(export(model, sparsifier)[0], itop.sparse.SparseLinear)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: sparsify(None, 0.1), r"^sparsify\(model, density\): model must be a torch.nn.Module, got None\.$"),
        (lambda: densify(None), r"^densify\(model\): model must be a torch.nn.Module, got None\.$"),
        (lambda: sparsify(mlp(), 0.1, seed="0"), r"^sparsify\(\.\.\., seed\): seed must be an int or None, got str\.$"),
        (lambda: sparsify(mlp(), 0.1, seed=1.5), r"seed must be an int or None, got float"),
        (
            lambda: sparsify(mlp(), 0.1, include="0.weight"),
            r"^sparsify\(\.\.\., include\): include must be a list of selectors, "
            r"e\.g\. include=\['0\.weight'\], got str\.$",
        ),
    ],
    ids=["sparsify-model", "densify-model", "sparsify-seed-str", "sparsify-seed-float", "sparsify-include-str"],
)
def test_wrong_argument_types_are_named(call, message):
    with pytest.raises(TypeError, match=message):
        call()


def test_sparsify_takes_a_numpy_integer_seed():
    np = pytest.importorskip("numpy")
    a, b = sparsify(mlp(), 0.3, seed=np.int64(3)), sparsify(mlp(), 0.3, seed=3)
    assert torch.equal(a[0].indices, b[0].indices)


def structured(model: nn.Module, structure: str, **options) -> itop.Sparsifier:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sparsifier = itop.Sparsifier(model, optimizer, structure=structure, grow="gradient", update_frequency=1, seed=0, **options)
    x, y = torch.randn(8, 20), torch.randint(0, 4, (8,))
    for _ in range(3):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        sparsifier.step()
    return sparsifier


def test_a_fan_in_model_exports_condensed_or_unstructured_with_the_same_outputs():
    model = mlp()
    sparsifier = structured(model, "fan-in", density=0.3, ablation=True)
    x = torch.randn(5, 20)
    condensed, plain = export(model, sparsifier), export(model, sparsifier, structured=False)
    assert isinstance(condensed[0], itop.sparse.CondensedLinear) and isinstance(plain[0], itop.sparse.SparseLinear)
    assert type(condensed).__name__ == "CondensedSequential" and type(plain) is nn.Sequential
    with torch.no_grad():
        torch.testing.assert_close(condensed(x), model(x), rtol=0, atol=1e-5)
        torch.testing.assert_close(condensed(x[:1]), model(x[:1]), rtol=0, atol=1e-5)  # the fused chain
        torch.testing.assert_close(plain(x), model(x), rtol=0, atol=1e-5)


def test_densify_undoes_a_condensed_export():
    model = mlp()
    sparsifier = structured(model, "fan-in", density=0.3, ablation=True)
    dense = densify(export(model, sparsifier))
    assert type(dense) is nn.Sequential and [type(m) for m in dense] == [nn.Linear, nn.ReLU, nn.Linear]
    for key, value in model.state_dict().items():
        torch.testing.assert_close(dense.state_dict()[key], value, rtol=0, atol=0)


def test_an_n_m_model_is_refused_on_the_cpu_in_one_line_but_exports_unstructured():
    model = mlp()
    sparsifier = structured(model, "2:4")
    with pytest.raises(ValueError, match="runs on CUDA devices only") as error:
        export(model, sparsifier)
    assert "\n" not in str(error.value)
    assert isinstance(export(model, sparsifier, structured=False)[0], itop.sparse.SparseLinear)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="to_sparse_semi_structured runs on CUDA only")
def test_a_2_4_model_exports_semi_structured_on_cuda():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 128)).cuda().half()
    sparsifier = itop.Sparsifier(model, torch.optim.SGD(model.parameters(), lr=0.1), structure="2:4", seed=0)
    exported = export(model, sparsifier)
    x = torch.randn(64, 128, device="cuda", dtype=torch.half)
    with torch.no_grad():
        torch.testing.assert_close(exported(x), model(x), rtol=1e-2, atol=1e-2)
