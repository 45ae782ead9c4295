"""`itop train` writes best_sparse.pt: the best model with its sparse Linear layers as SparseLinear."""

import json
from pathlib import Path

import pytest
import torch

from itop.models import create_model
from itop.sparse import SparseLinear
from itop.train import best_sparse, loop

from .test_cli import TINY as CLI_TINY
from .test_cli import run

TINY = CLI_TINY[: CLI_TINY.index("--epochs")] + ["--epochs", "2"] + CLI_TINY[CLI_TINY.index("--epochs") + 2 :]


@pytest.fixture
def best_is_first_epoch(monkeypatch):
    """Validation accuracy 1, 1/2, 1/3, ...: the best epoch is the first, and the masks change after it."""
    original = loop.Run._evaluate

    def worse_each_epoch(self, loader):
        loss, acc = original(self, loader)
        return (loss, 1.0 / (self.epoch + 1)) if loader is self.val_loader and loader is not self.test_loader else (loss, acc)

    monkeypatch.setattr(loop.Run, "_evaluate", worse_each_epoch)


def lenet():
    return create_model("lenet300-100", num_classes=10, in_channels=1, image_size=28)


def dense_best(run_dir):
    model = lenet()
    model.load_state_dict(torch.load(Path(run_dir, "best.pt"), weights_only=True)["model"])
    return model.eval()


def test_best_sparse_holds_the_best_epoch_with_its_masks_and_is_smaller(capsys, best_is_first_epoch):
    code, out, err = run([*TINY, "--save", "s"], capsys)
    assert code == 0, err
    saved = torch.load("s/best_sparse.pt", weights_only=True)
    assert saved["format"] == 1 and saved["epoch"] == 1 == json.loads(Path("s/summary.json").read_text())["best_epoch"]
    layers = saved["truly_sparse_layers"]
    assert set(layers) and set(layers) <= {"fc1", "fc2", "fc3"}

    best = torch.load("s/best.pt", weights_only=True)["model"]
    final_masks = torch.load("s/checkpoint.pt", weights_only=True)["sparsifier"]["masks"]
    moved = 0
    for name, sizes in layers.items():
        (out_features, in_features), nnz = sizes["shape"], sizes["nnz"]
        indices, values = saved["model"][f"{name}.indices"], saved["model"][f"{name}.values"]
        weight = best[f"{name}.weight"].reshape(-1)
        assert (in_features * out_features, out_features) == (weight.numel(), best[f"{name}.bias"].numel())
        assert indices.numel() == values.numel() == nnz == int(final_masks[f"{name}.weight"].sum())
        assert torch.equal(indices, indices.sort().values) and torch.equal(values, weight[indices])
        assert set(weight.nonzero().flatten().tolist()) <= set(indices.tolist())  # nothing of the best weights lost
        assert torch.equal(saved["model"][f"{name}.bias"], best[f"{name}.bias"])
        moved += not torch.equal(indices, final_masks[f"{name}.weight"].reshape(-1).nonzero().flatten())
    assert moved  # the topology changed after the best epoch: the export used the masks of that epoch

    sparse = best_sparse.load_sparse_model(Path("s/best_sparse.pt"), lenet()).eval()
    assert {n for n, m in sparse.named_modules() if isinstance(m, SparseLinear)} == set(layers)
    x = torch.randn(64, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), dense_best("s")(x), atol=1e-5, rtol=1e-5)

    summary = json.loads(Path("s/summary.json").read_text())
    sizes = Path("s/best_sparse.pt").stat().st_size, Path("s/best.pt").stat().st_size
    assert (summary["best_sparse_bytes"], summary["best_dense_bytes"]) == sizes and sizes[0] < sizes[1] / 4
    assert f"best_sparse.pt: {sizes[0] / 1e6:.2f} MB, against {sizes[1] / 1e6:.2f} MB dense (best.pt model)" in out
    assert f"— {sizes[1] / sizes[0]:.1f}x smaller" in out


def test_a_run_resumed_after_its_best_epoch_keeps_that_epochs_export(capsys, monkeypatch, best_is_first_epoch):
    assert run([*TINY, "--save", "full"], capsys)[0] == 0
    original = loop.Run.train_epoch

    def crash_in_second_epoch(self):
        if self.epoch == 1:
            raise KeyboardInterrupt
        return original(self)

    with monkeypatch.context() as patch:
        patch.setattr(loop.Run, "train_epoch", crash_in_second_epoch)
        assert run([*TINY, "--save", "cut"], capsys)[0] == 130
    code, out, err = run(["--resume", "cut", "--no-progress"], capsys)
    assert code == 0 and "best_sparse.pt: " in out, err
    full, cut = (torch.load(f"{d}/best_sparse.pt", weights_only=True) for d in ("full", "cut"))
    assert full["truly_sparse_layers"] == cut["truly_sparse_layers"] and full["epoch"] == cut["epoch"] == 1
    assert full["model"].keys() == cut["model"].keys()
    for key, value in full["model"].items():
        assert torch.equal(value, cut["model"][key]), key


def test_a_dense_run_writes_no_sparse_export(capsys):
    code, out, err = run(
        ["--model", "lenet300-100", "--data", "mnist5k", "--epochs", "1", "--batch-size", "500", "--no-progress", "--save", "d"], capsys
    )
    assert code == 0, err
    assert Path("d/best.pt").is_file() and not Path("d/best_sparse.pt").exists()
    assert "best_sparse.pt" not in out and "best_sparse_bytes" not in json.loads(Path("d/summary.json").read_text())


def test_the_size_line_says_larger_when_the_export_outweighs_the_dense_weights():
    from itop.train.notices import sparse_size_line

    assert sparse_size_line({"best_sparse_bytes": 1_000_000, "best_dense_bytes": 4_000_000}).endswith("— 4.0x smaller")
    line = sparse_size_line({"best_sparse_bytes": 3_000_000, "best_dense_bytes": 2_000_000})
    assert "— 1.5x larger: at this density values and positions outweigh the dense weights" in line
