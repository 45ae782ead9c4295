"""The documentation's complete examples run as written (the trainer examples have their own test,
tests/integrations/test_readme_examples.py); fragments that continue a user's own code are not run."""

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


def block(page: str, starts_with: str) -> str:
    """The python block of `page` whose first line starts with `starts_with`."""
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), re.S)
    found = [b for b in blocks if b.startswith(starts_with)]
    assert len(found) == 1, f"{page}: expected one python block starting with {starts_with!r}, found {len(found)}"
    return found[0]


def run(code: str, cwd: Path) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.parametrize(
    "page, starts_with, prints",
    [
        ("own-loop.md", "import torch\nfrom torch import nn", r"density 0\.050, Rs 0\.\d+, accuracy 0\.\d+"),
        ("truly-sparse.md", "import torch", r"\S"),
        ("structured.md", "import torch", r"fan-in \d+ ablated \d+ density 0\.\d+[\s\S]*same outputs: True"),
        ("api/data.md", "", r"\S"),
    ],
)
def test_complete_examples_run(tmp_path, page, starts_with, prints):
    assert re.search(prints, run(block(page, starts_with), tmp_path))


def test_loading_a_saved_run_as_getting_started_shows(tmp_path):
    from itop.__main__ import main

    code = block("getting-started.md", "import torch\nimport itop")
    run_dir = re.search(r'run = "(runs/[^"]+)"', code).group(1)
    assert main(["train", "--epochs", "2", "--no-progress", "--save", str(tmp_path / run_dir)]) == 0
    printed = run(code, tmp_path)
    assert re.search(r"SparseLinear\(in_features=784, out_features=300", printed)
    assert re.search(r"tensor\(0\.\d+\)", printed)


def docstring_examples(obj) -> list[str]:
    return re.findall(r"```python\n(.*?)```", textwrap.dedent(obj.__doc__ or ""), re.S)


@pytest.mark.parametrize("name", ["itop.sparse.SparseLinear", "itop.data.load_dataset"])
def test_self_contained_docstring_examples_run(tmp_path, name):
    import importlib

    module, _, attr = name.rpartition(".")
    examples = docstring_examples(getattr(importlib.import_module(module), attr))
    assert examples, f"{name} lost its example"
    for example in examples:
        run("import torch\nimport itop\n" + textwrap.dedent(example), tmp_path)
