import pytest

from .fake import write_runs


@pytest.fixture
def run_dirs(tmp_path):
    """[rigl-95, set-90, dense, crashed] under tmp_path/runs."""
    return write_runs(tmp_path / "runs")
