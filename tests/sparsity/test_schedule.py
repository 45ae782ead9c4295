import pytest

from itop.sparsity.schedule import PruneSchedule


def test_cosine_rates_of_reference():
    """REFERENCE 11.5: T=300, update every 50 steps."""
    s = PruneSchedule(0.5, 50, 300)
    rates = [s.rate(t) for t in range(50, 301, 50)]
    assert rates == pytest.approx([0.4668, 0.3762, 0.2525, 0.1287, 0.0382, 0.0050], abs=6e-5)
    assert s.rate(0) == 0.5 and s.rate(10_000) == pytest.approx(0.005)


def test_update_steps_and_static():
    s = PruneSchedule(0.5, 50, 300)
    assert [t for t in range(0, 301) if s.is_update(t)] == [50, 100, 150, 200, 250, 300]
    assert not any(PruneSchedule(0.5, None, 300).is_update(t) for t in range(301))


def test_linear_and_constant_decay():
    assert PruneSchedule(0.5, 10, 100, decay="linear").rate(50) == pytest.approx(0.2525)
    assert PruneSchedule(0.5, 10, 100, decay="constant").rate(90) == 0.5
    with pytest.raises(ValueError, match="constant, cosine, linear"):
        PruneSchedule(0.5, 10, 100, decay="exp")
