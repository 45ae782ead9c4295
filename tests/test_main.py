"""`itop` itself: --version."""

import importlib.metadata

import pytest

import itop
from itop.__main__ import main


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_prints_the_installed_version(flag, capsys):
    assert main([flag]) == 0
    out, err = capsys.readouterr()
    assert out == f"itop {importlib.metadata.version('itop')}\n" and err == ""


def test_version_of_a_checkout_that_is_not_installed(capsys, monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"itop {itop.__version__}\n"
