"""Where dataset files live, and fetching them when they are not there yet.

Users with a network get the standard files downloaded on first use; users without one
(clusters, these build machines) get one line saying which files to put where. Downloads
go to a `.part` file that is renamed only once complete and checksummed, so an
interrupted download never leaves a file that later looks valid. Archives are extracted
member by member after checking that no path escapes the target directory.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import urllib.request
from pathlib import Path

from .errors import EMBEDDED_DATA_HINT, DataError

__all__ = [
    "DEFAULT_TIMEOUT",
    "default_data_dir",
    "resolve_data_dir",
    "download_url",
    "extract_tar",
    "fetch_archive",
    "fetch_files",
    "missing_files_error",
]

DEFAULT_TIMEOUT = 15.0  # seconds per connect / read: fail fast when offline


def default_data_dir() -> Path:
    """`$ITOP_DATA_DIR` if set, else `~/.cache/itop/data`."""
    env = os.environ.get("ITOP_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "itop" / "data"


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    return default_data_dir() if data_dir is None else Path(data_dir).expanduser()


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_url(url: str, dest: Path, *, md5: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Download `url` to `dest` atomically; raises OSError or DataError on failure."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "itop"})
        with urllib.request.urlopen(request, timeout=timeout) as response, open(part, "wb") as out:
            shutil.copyfileobj(response, out, 1 << 20)
        if md5 is not None and _md5(part) != md5:
            raise DataError(f"{url}: downloaded file has the wrong checksum (expected md5 {md5}).")
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)


def _safe_members(archive: tarfile.TarFile, dest: Path) -> list[tarfile.TarInfo]:
    root = dest.resolve()
    members = []
    for member in archive.getmembers():
        target = (root / member.name).resolve()
        refuse = f"{archive.name}: refusing archive entry {member.name!r}"
        if not (member.isfile() or member.isdir()):
            raise DataError(f"{refuse} (not a plain file).")
        if os.path.isabs(member.name) or (target != root and root not in target.parents):
            raise DataError(f"{refuse} (outside the target).")
        members.append(member)
    return members


def extract_tar(archive_path: Path, dest: Path) -> None:
    """Extract a (gzipped) tar archive into `dest`, refusing links and escaping paths."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive_path, "r:*") as archive:
            members = _safe_members(archive, dest)
            extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            archive.extractall(dest, members=members, **extra)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"{archive_path}: cannot extract archive ({_one_line(exc)}).") from None


def fetch_files(base_url: str, names: list[str], directory: Path, md5s: dict[str, str] | None = None) -> str | None:
    """Try to download each of `names` from `base_url`; return why it failed, or None."""
    try:
        for name in names:
            download_url(base_url + name, directory / name, md5=(md5s or {}).get(name))
    except (OSError, ValueError) as exc:
        return _one_line(exc)
    return None


def fetch_archive(url: str, directory: Path, md5: str | None = None) -> str | None:
    """Download a tar archive into `directory`, extract it there and delete it."""
    archive = directory / url.rsplit("/", 1)[-1]
    try:
        download_url(url, archive, md5=md5)
        extract_tar(archive, directory)
    except (OSError, ValueError) as exc:
        return _one_line(exc)
    finally:
        archive.unlink(missing_ok=True)
    return None


def missing_files_error(what: str, names: list[str], directory: Path, reason: str | None = None) -> DataError:
    """The one-line error for files that are absent and could not be downloaded; it ends by
    naming the embedded digits, which need no files (the way forward offline)."""
    tried = f" (download failed: {' '.join(reason.split())})" if reason else " (download not attempted)"
    return DataError(f"{what} files missing: {', '.join(names)}; put them in {directory}{tried}; {EMBEDDED_DATA_HINT}.")


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())
