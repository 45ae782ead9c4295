import math

import pytest

from itop.sparsity.density import DISTRIBUTIONS, er_epsilon_density, layer_counts

LENET300 = {"fc1.weight": (300, 784), "fc2.weight": (100, 300), "fc3.weight": (10, 100)}
LENET5 = {"conv1.weight": (20, 1, 5, 5), "conv2.weight": (50, 20, 5, 5), "fc3.weight": (500, 800), "fc4.weight": (10, 500)}


def total(shapes, densities):
    return sum(densities[n] * math.prod(s) for n, s in shapes.items())


def test_erk_lenet300_100_matches_reference():
    d = DISTRIBUTIONS.get("erk")(LENET300, 0.05)
    assert d["fc1.weight"] == pytest.approx(0.038484, abs=5e-7)
    assert d["fc2.weight"] == pytest.approx(0.111334, abs=5e-7)
    assert d["fc3.weight"] == pytest.approx(0.918507, abs=5e-7)
    assert total(LENET300, d) == pytest.approx(0.05 * 266_200)


def test_erk_lenet5_matches_reference_with_dense_last_layer():
    d = DISTRIBUTIONS.get("erk")(LENET5, 0.05)
    assert [round(d[n], 5) for n in LENET5] == [0.72612, 0.03748, 0.03806, 1.0]
    assert total(LENET5, d) == pytest.approx(0.05 * 430_500)


def test_equal_shapes_become_dense_together():
    shapes = {f"l{i}": (64, 64, 3, 3) for i in range(4)}
    shapes["big"] = (512, 512, 3, 3)
    d = DISTRIBUTIONS.get("erk")(shapes, 0.2)
    assert all(d[f"l{i}"] == 1.0 for i in range(4))
    assert d["big"] < 1 and total(shapes, d) == pytest.approx(0.2 * sum(math.prod(s) for s in shapes.values()))


def test_er_ignores_kernel_dimensions():
    shapes = {"a": (16, 8, 3, 3), "b": (16, 8, 5, 5), "c": (256, 256, 3, 3)}
    d = DISTRIBUTIONS.get("er")(shapes, 0.1)
    assert d["a"] == pytest.approx(d["b"])  # same (out + in) / (out * in)
    assert total(shapes, d) == pytest.approx(0.1 * sum(math.prod(s) for s in shapes.values()))


def test_uniform_and_density_one():
    assert set(DISTRIBUTIONS.get("uniform")(LENET300, 0.3).values()) == {0.3}
    assert set(DISTRIBUTIONS.get("erk")(LENET300, 1.0).values()) == {1.0}


def test_layer_counts_exact_rounding_and_bounds():
    counts = layer_counts({"a": (10, 10), "b": (3,), "c": (4, 4)}, {"a": 0.333, "b": 0.0001, "c": 1.0})
    assert counts == {"a": 33, "b": 1, "c": 16}


def test_unknown_distribution_lists_choices():
    with pytest.raises(ValueError, match="er, erk, uniform"):
        DISTRIBUTIONS.get("ERK-typo")


@pytest.mark.parametrize(
    "sizes,epsilon",
    [
        ([784, 1000, 1000, 1000, 10], 20),
        ([784, 333334, 333333, 333333, 10], 10),
        ([3312, 3000, 3000, 3000, 5], 20),
        ([3072, 4000, 1000, 4000, 10], 20),
        ([20, 30, 5], 3),
    ],
)
def test_er_at_the_epsilon_density_gives_sets_layer_counts(sizes, epsilon):
    """SET's layers keep epsilon * (n_in + n_out) weights, capped at dense, and ER at the global
    density er_epsilon_density gives back exactly those counts (dense where SET caps)."""
    shapes = {f"l{i}": (b, a) for i, (a, b) in enumerate(zip(sizes, sizes[1:]))}
    density = er_epsilon_density(shapes, epsilon)
    counts = layer_counts(shapes, DISTRIBUTIONS.get("er")(shapes, density))
    expected = {f"l{i}": min(a * b, epsilon * (a + b)) for i, (a, b) in enumerate(zip(sizes, sizes[1:]))}
    assert counts == expected
