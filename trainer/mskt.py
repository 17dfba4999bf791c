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

import sys
from pathlib import Path, PurePosixPath

from KneeSegmentationLib import paths
from KneeSegmentationLib.errors import DatasetError

from .sdist import Sdist, ensure_sdist, extract

MSKT_VERSION = "0.1.22"
SDIST = Sdist("mskt", MSKT_VERSION, "b49ffa4924337e28dc08af2e7efab399e9248c9e7db477e593d5d6e254757308",
              no_binary="mskt")
SDIST_NAME = SDIST.file_name
ARCHIVE_ROOT = SDIST.archive_root
EXTRACTED_DIR = f"mskt-{MSKT_VERSION}"  # <cache>/mskt-0.1.22/data/...

LABEL_MAPS = (
    "data/right_knee_example.nrrd",
    "data/SAG_3D_DESS_RIGHT_bones_cart_men_fib-label.nrrd",
    "data/Par_Rec_T2_Test/T2-label.nrrd",
)
DICOM_DIR = "data/MESE_T2_dicom_data_anon"
FORBIDDEN_DIR = "data/MESE_T2_dicom_data"  # not de-identified: never extracted
DICOM_FILE_COUNT = 192  # 8 echoes x 24 slices


def fetch_mskt(cache_dir: Path | None = None) -> Path:
    """Returns the extracted ``data/`` folder, downloading and extracting the sdist on first use."""
    cache = Path(cache_dir) if cache_dir is not None else paths.cache_dir()
    data = cache / EXTRACTED_DIR / "data"
    if _is_complete(data):
        return data
    cache.mkdir(parents=True, exist_ok=True)
    sdist = ensure_sdist(SDIST, cache)
    _extract_needed(sdist, cache / EXTRACTED_DIR)
    if not _is_complete(data):
        raise DatasetError(f"Extraction of {sdist} did not produce the expected files under {data}.")
    return data


def _is_complete(data: Path) -> bool:
    dicom = data / "MESE_T2_dicom_data_anon"
    return (all((data / PurePosixPath(name).relative_to("data")).is_file() for name in LABEL_MAPS)
            and dicom.is_dir() and len(list(dicom.glob("*.dcm"))) == DICOM_FILE_COUNT)


def _wanted(relative: PurePosixPath) -> bool:
    """True for the label maps and the files of the de-identified DICOM folder, nothing else."""
    text = relative.as_posix()
    if text in LABEL_MAPS:
        return True
    assert relative.parts[:2] != tuple(FORBIDDEN_DIR.split("/")) or relative.parent.as_posix() != DICOM_DIR
    return relative.parent.as_posix() == DICOM_DIR and text.endswith(".dcm")


def _extract_needed(archive: Path, destination: Path) -> None:
    """Extracts the label maps and the de-identified DICOM files of ``archive`` into ``destination``."""
    extract(SDIST, archive, destination, _wanted, lambda d: _is_complete(d / "data"))


def main() -> None:
    """``python -m trainer.mskt [CACHE_DIR]``: fetch and print the data folder."""
    cache = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    try:
        print(fetch_mskt(cache))
    except DatasetError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
