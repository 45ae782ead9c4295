import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from itop.data import DataError, default_data_dir, download


def test_default_data_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("ITOP_DATA_DIR", str(tmp_path / "d"))
    assert default_data_dir() == tmp_path / "d"
    monkeypatch.delenv("ITOP_DATA_DIR")
    assert default_data_dir() == Path.home() / ".cache" / "itop" / "data"


def test_resolve_none_is_default(monkeypatch, tmp_path):
    monkeypatch.setenv("ITOP_DATA_DIR", str(tmp_path))
    assert download.resolve_data_dir(None) == tmp_path


def test_download_url_from_file_url_with_md5(tmp_path):
    source = tmp_path / "src.bin"
    source.write_bytes(b"payload")
    dest = tmp_path / "out" / "file.bin"
    md5 = hashlib.md5(b"payload").hexdigest()
    download.download_url(source.as_uri(), dest, md5=md5)
    assert dest.read_bytes() == b"payload"
    assert not (tmp_path / "out" / "file.bin.part").exists()


def test_download_url_wrong_md5_leaves_nothing(tmp_path):
    source = tmp_path / "src.bin"
    source.write_bytes(b"payload")
    dest = tmp_path / "file.bin"
    with pytest.raises(DataError, match="checksum"):
        download.download_url(source.as_uri(), dest, md5="0" * 32)
    assert not dest.exists() and not (tmp_path / "file.bin.part").exists()


def test_fetch_files_reports_failure_in_one_line(tmp_path):
    reason = download.fetch_files((tmp_path / "nowhere").as_uri() + "/", ["a.gz"], tmp_path)
    assert reason and "\n" not in reason
    assert not (tmp_path / "a.gz").exists()


def make_tar(path: Path, entries) -> None:
    with tarfile.open(path, "w:gz") as archive:
        for info, data in entries:
            archive.addfile(info, io.BytesIO(data) if data is not None else None)


def file_entry(name: str, data: bytes = b"x"):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def test_extract_tar_plain(tmp_path):
    archive = tmp_path / "a.tar.gz"
    make_tar(archive, [file_entry("folder/inner.txt", b"hello")])
    download.extract_tar(archive, tmp_path / "out")
    assert (tmp_path / "out" / "folder" / "inner.txt").read_bytes() == b"hello"


@pytest.mark.parametrize("name", ["../escape.txt", "/abs/escape.txt", "folder/../../escape.txt"])
def test_extract_tar_refuses_escaping_paths(tmp_path, name):
    archive = tmp_path / "a.tar.gz"
    make_tar(archive, [file_entry(name)])
    with pytest.raises(DataError, match="refusing"):
        download.extract_tar(archive, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()


def test_extract_tar_refuses_links(tmp_path):
    link = tarfile.TarInfo("folder/link")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    archive = tmp_path / "a.tar.gz"
    make_tar(archive, [(link, None)])
    with pytest.raises(DataError, match="not a plain file"):
        download.extract_tar(archive, tmp_path / "out")


def test_extract_tar_corrupt_archive(tmp_path):
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(b"not a tar at all")
    with pytest.raises(DataError, match="cannot extract"):
        download.extract_tar(archive, tmp_path / "out")


def test_missing_files_error_is_one_line(tmp_path):
    error = download.missing_files_error("X", ["a", "b"], tmp_path, "no\nnetwork")
    assert isinstance(error, DataError)
    text = str(error)
    assert "a, b" in text and str(tmp_path) in text and "\n" not in text


def test_missing_files_error_names_the_embedded_digits(tmp_path):
    text = str(download.missing_files_error("MNIST", ["a"], tmp_path, "<urlopen error offline>"))
    assert text.endswith(
        "(download failed: <urlopen error offline>); or train on the 5,000 MNIST digits that come with itop: --data mnist5k."
    )
