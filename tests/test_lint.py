"""ruff (configured in pyproject.toml) is clean over the code: lint rules, import order, format."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PATHS = ["src", "tests", "benchmarks"]


def ruff(*args):
    try:
        import ruff  # noqa: F401  (installed by the test extra)
    except ImportError:
        if shutil.which("ruff") is None:
            pytest.skip("ruff is not installed: pip install -e '.[test]'")
    return subprocess.run([sys.executable, "-m", "ruff", *args, *PATHS], cwd=ROOT, capture_output=True, text=True)


def test_ruff_check_is_clean():
    done = ruff("check", "--no-cache")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-1000:]


def test_ruff_format_is_clean():
    done = ruff("format", "--check", "--no-cache")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-1000:]
