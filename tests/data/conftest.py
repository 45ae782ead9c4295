import pytest

from itop.data import download


@pytest.fixture
def no_network(monkeypatch):
    """Make every download fail at once, and record the URLs that were tried."""
    tried = []

    def fail(url, dest, **kwargs):
        tried.append(url)
        raise OSError("network disabled in tests")

    monkeypatch.setattr(download, "download_url", fail)
    return tried
