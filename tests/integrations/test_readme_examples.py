"""The README's Hugging Face and Lightning examples run as written, only shortened."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def example(heading: str) -> str:
    """The first python block after `heading` in the README."""
    text = README.read_text()
    start = text.index(f"\n## {heading}\n")
    return re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)


@pytest.mark.parametrize("heading, shorter", [
    ("Hugging Face Trainer", {"num_train_epochs=10": "max_steps=6"}),
    ("PyTorch Lightning", {"max_epochs=10": "max_epochs=1, limit_train_batches=6, limit_val_batches=2"}),
])
def test_readme_example_runs(tmp_path, heading, shorter):
    code = example(heading)
    for old, new in shorter.items():
        assert old in code, f"the README's {heading} example no longer sets {old}"
        code = code.replace(old, new)
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    line = done.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"density 0\.\d{3}, Rs 0\.\d{3}, accuracy \d\.\d{3}", line), line
