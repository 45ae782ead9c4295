"""`import itop` alone reaches the public subpackages, lazily, and knows its version.

Each check runs in a fresh interpreter: in this one, other tests have imported the subpackages.
"""

import importlib.metadata
import subprocess
import sys

import pytest

import itop


def fresh_python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_subpackages_are_reachable_from_import_itop_alone():
    out = fresh_python(
        "import itop\n"
        "print(callable(itop.data.load_dataset), callable(itop.models.create_model), callable(itop.report.load_run),\n"
        "      callable(itop.sparse.sparsify), callable(itop.flops.count_flops), itop.train.__name__, itop.integrations.__name__)"
    )
    assert out == "True True True True True itop.train itop.integrations"


def test_import_itop_defers_the_subpackages_and_the_trainers():
    out = fresh_python(
        "import sys, itop\n"
        "names = ['itop.data', 'itop.models', 'itop.report', 'itop.train', 'itop.integrations', 'transformers', 'lightning']\n"
        "print([n for n in names if n in sys.modules])\n"
        "itop.integrations\n"
        "print([n for n in ('transformers', 'lightning') if n in sys.modules])"
    )
    assert out == "[]\n[]"


def test_itop_train_loads_torch_distributed_checkpoint_only_for_fsdp():
    # DTensor and DCP take about 0.6 s to import; a run that does not shard does not pay it
    out = fresh_python(
        "import sys, itop.train.cli, itop.train.loop\n"
        "print([n for n in ('torch.distributed.checkpoint', 'torch.distributed.tensor') if n in sys.modules])"
    )
    assert out == "[]"


def test_dir_lists_the_lazy_subpackages_and_unknown_names_still_raise():
    assert {"data", "models", "report", "train", "integrations", "sparse", "flops"} <= set(dir(itop))
    assert {"data", "models", "sparse"} <= set(itop.__all__)
    with pytest.raises(AttributeError, match="no attribute 'not_a_subpackage'"):
        itop.not_a_subpackage  # noqa: B018


def test_version_is_read_from_the_installed_distribution(monkeypatch):
    assert itop.__version__ == importlib.metadata.version("itop")
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "9.8.7")
    assert itop._version() == "9.8.7"


def test_version_of_a_source_tree_that_is_not_installed(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    assert itop._version() == "0+unknown"
