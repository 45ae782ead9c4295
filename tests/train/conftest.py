import pytest

from itop.data import download


@pytest.fixture(autouse=True)
def offline_and_isolated(tmp_path, monkeypatch):
    """Every CLI test runs in its own directory, with an empty data dir and no network."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ITOP_DATA_DIR", str(tmp_path / "data"))

    def fail(url, dest, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(download, "download_url", fail)
