import torch

from itop.sparsity.exploration import Exploration


def test_rate_is_union_and_monotone():
    m0 = {"a": torch.tensor([True, False, False, False]), "b": torch.tensor([True, True])}
    ex = Exploration(m0)
    assert ex.rate == 3 / 6
    ex.update({"a": torch.tensor([False, True, False, False]), "b": torch.tensor([True, False])})
    assert ex.rate == 4 / 6 and ex.layer_rate("a") == 0.5
    m0["a"][3] = True  # the tracker keeps its own copy
    assert ex.rate == 4 / 6
    restored = Exploration({"a": torch.zeros(4, dtype=torch.bool), "b": torch.zeros(2, dtype=torch.bool)})
    restored.load_state_dict(ex.state_dict())
    assert restored.rate == ex.rate
