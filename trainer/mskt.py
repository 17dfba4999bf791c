"""Fetch the real knee data of the ``mskt==0.1.22`` sdist (MIT per its PyPI metadata) into a local cache.

Why: the project ships no third-party scans; scripts (set-up, trainer, tests that need the real series)
fetch the sdist once with pip, check it against a pinned SHA-256, and extract only what we use:
the three bone label maps and the de-identified DICOM series ``MESE_T2_dicom_data_anon/``. The
non-de-identified ``MESE_T2_dicom_data/`` in the same archive is never extracted.

Usage::

    from trainer.mskt import fetch_mskt
    data = fetch_mskt()              # Path(".../mskt-0.1.22/data")
    data / "MESE_T2_dicom_data_anon"

or from a shell: ``python -m trainer.mskt`` prints the folder.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from KneeSegmentationLib.errors import DatasetError
from KneeSegmentationLib.files import sha256_of

MSKT_VERSION = "0.1.22"
SDIST_NAME = f"mskt-{MSKT_VERSION}.tar.gz"
SDIST_SHA256 = "b49ffa4924337e28dc08af2e7efab399e9248c9e7db477e593d5d6e254757308"
ARCHIVE_ROOT = f"mskt-{MSKT_VERSION}"
EXTRACTED_DIR = f"mskt-{MSKT_VERSION}"  # <cache>/mskt-0.1.22/data/...
CACHE_ENV = "KNEESEG_CACHE"
DEFAULT_CACHE = Path.home() / ".cache" / "kneesegmentation"

LABEL_MAPS = (
    "data/right_knee_example.nrrd",
    "data/SAG_3D_DESS_RIGHT_bones_cart_men_fib-label.nrrd",
    "data/Par_Rec_T2_Test/T2-label.nrrd",
)
DICOM_DIR = "data/MESE_T2_dicom_data_anon"
FORBIDDEN_DIR = "data/MESE_T2_dicom_data"  # not de-identified: never extracted
DICOM_FILE_COUNT = 192  # 8 echoes x 24 slices
CHUNK = 1 << 20


def cache_dir_default() -> Path:
    """``$KNEESEG_CACHE`` if set, else ``~/.cache/kneesegmentation``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else DEFAULT_CACHE


def fetch_mskt(cache_dir: Path | None = None) -> Path:
    """Returns the extracted ``data/`` folder, downloading and extracting the sdist on first use."""
    cache = Path(cache_dir) if cache_dir is not None else cache_dir_default()
    data = cache / EXTRACTED_DIR / "data"
    if _is_complete(data):
        return data
    cache.mkdir(parents=True, exist_ok=True)
    sdist = _ensure_sdist(cache)
    _extract_needed(sdist, cache / EXTRACTED_DIR)
    if not _is_complete(data):
        raise DatasetError(f"Extraction of {sdist} did not produce the expected files under {data}.")
    return data


def _is_complete(data: Path) -> bool:
    dicom = data / "MESE_T2_dicom_data_anon"
    return (all((data / PurePosixPath(name).relative_to("data")).is_file() for name in LABEL_MAPS)
            and dicom.is_dir() and len(list(dicom.glob("*.dcm"))) == DICOM_FILE_COUNT)


def _ensure_sdist(cache: Path) -> Path:
    """The verified sdist in the cache; downloads it with pip (source only) if it is absent."""
    target = cache / SDIST_NAME
    if target.is_file():
        if sha256_of(target) == SDIST_SHA256:
            return target
        target.unlink()  # a corrupt or foreign file: fetch again rather than trust it
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
        got = _pip_download(Path(tmp))
        digest = sha256_of(got)
        if digest != SDIST_SHA256:
            raise DatasetError(f"{SDIST_NAME} has SHA-256 {digest}, expected {SDIST_SHA256}; refusing to use it.")
        os.replace(got, target)
    return target


def _pip_download(folder: Path) -> Path:
    """Downloads the sdist (never a wheel) into ``folder``.

    pip prepares an sdist's metadata even for ``download``; mskt's build requirements (numpy, Cython) are
    heavy, so we first try without build isolation (setuptools of this environment suffices), then with it.
    """
    base = [sys.executable, "-m", "pip", "download", f"mskt=={MSKT_VERSION}", "--no-deps",
            "--no-binary", "mskt", "--disable-pip-version-check", "-d", str(folder)]
    errors = []
    for extra in (["--no-build-isolation"], []):
        result = subprocess.run(base + extra, capture_output=True, text=True)
        got = folder / SDIST_NAME
        if result.returncode == 0 and got.is_file():
            return got
        tail = (result.stderr or result.stdout).strip().splitlines()[-2:]
        errors.append(f"`{' '.join(base + extra)}`: {' | '.join(tail) or 'no sdist produced'}")
    raise DatasetError(f"Could not download the mskt {MSKT_VERSION} sdist with pip. " + " ; ".join(errors))


def _wanted(relative: PurePosixPath) -> bool:
    """True for the label maps and the files of the de-identified DICOM folder, nothing else."""
    text = relative.as_posix()
    if text in LABEL_MAPS:
        return True
    return relative.parent.as_posix() == DICOM_DIR and text.endswith(".dcm")


def _safe_relative(name: str) -> PurePosixPath | None:
    """The member path below the archive root, or None if it is outside it or climbs out of it."""
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts or path.parts[0] != ARCHIVE_ROOT:
        return None
    return PurePosixPath(*path.parts[1:]) if len(path.parts) > 1 else None


def _extract_needed(sdist: Path, destination: Path) -> None:
    """Extracts the wanted regular files into a temporary folder, then renames it into place."""
    tmp = Path(tempfile.mkdtemp(dir=destination.parent, prefix=".extract-"))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache is shared by the user's tools
    try:
        with tarfile.open(sdist, "r:gz") as archive:
            for member in archive:
                relative = _safe_relative(member.name)
                if relative is None or not member.isfile() or not _wanted(relative):
                    continue
                assert relative.parts[:2] != tuple(FORBIDDEN_DIR.split("/"))
                out = tmp.joinpath(*relative.parts)
                out.parent.mkdir(parents=True, exist_ok=True)
                source = archive.extractfile(member)
                if source is None:
                    continue
                with source, open(out, "wb") as f:
                    shutil.copyfileobj(source, f, CHUNK)
        if destination.exists():
            shutil.rmtree(destination)  # an incomplete earlier extraction
        try:
            os.rename(tmp, destination)
        except OSError:
            if not _is_complete(destination / "data"):  # lost a race to another complete extraction?
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    """``python -m trainer.mskt [CACHE_DIR]``: fetch and print the data folder."""
    cache = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    try:
        print(fetch_mskt(cache))
    except DatasetError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
