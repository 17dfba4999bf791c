"""The real-data fetcher extracts only what we use, safely: nothing outside its folder, never the
non-de-identified DICOM folder, and never an archive whose checksum differs from the pinned one."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from trainer import sdist as sdist_module

from KneeSegmentationLib.errors import DatasetError
from trainer import mskt

ROOT = mskt.ARCHIVE_ROOT


def add(archive: tarfile.TarFile, name: str, data: bytes = b"x", kind: bytes = tarfile.REGTYPE,
        link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, len(data) if kind == tarfile.REGTYPE else 0
    archive.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def hostile_sdist(path: Path) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        add(archive, f"{ROOT}/data/right_knee_example.nrrd", b"labels")
        add(archive, f"{ROOT}/data/MESE_T2_dicom_data_anon/E1.MR.dcm", b"anon")
        add(archive, f"{ROOT}/data/MESE_T2_dicom_data/E1.MR.dcm", b"NOT DE-IDENTIFIED")
        add(archive, f"{ROOT}/data/MESE_T2_dicom_data_anon/../../../../escaped.dcm", b"evil")
        add(archive, "/tmp/absolute.nrrd", b"evil")
        add(archive, f"{ROOT}/data/MESE_T2_dicom_data_anon/link.dcm", kind=tarfile.SYMTYPE, link="/etc/passwd")
        add(archive, f"{ROOT}/setup.py", b"print('never extracted')")
    return path


def test_extracts_only_wanted_regular_files_inside_the_destination(tmp_path: Path) -> None:
    sdist = hostile_sdist(tmp_path / "sdist.tar.gz")
    destination = tmp_path / "cache" / "mskt"
    destination.parent.mkdir()
    mskt._extract_needed(sdist, destination)
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file() or p.is_symlink())
    assert files == ["cache/mskt/data/MESE_T2_dicom_data_anon/E1.MR.dcm", "cache/mskt/data/right_knee_example.nrrd",
                     "sdist.tar.gz"]
    assert not list(tmp_path.rglob(".extract-*")), "temporary extraction folder left behind"


def test_a_download_with_the_wrong_checksum_is_refused(tmp_path: Path, monkeypatch) -> None:
    def fake_download(_sdist, folder: Path) -> Path:
        fake = folder / mskt.SDIST_NAME
        fake.write_bytes(b"not the sdist")
        return fake

    monkeypatch.setattr(sdist_module, "_pip_download", fake_download)
    with pytest.raises(DatasetError, match="expected b49ffa49"):
        mskt.fetch_mskt(tmp_path)
    assert not (tmp_path / mskt.SDIST_NAME).exists()


def test_the_cached_real_data_is_complete() -> None:
    from realdata import mskt_data

    data = mskt_data()
    assert mskt._is_complete(data)
    assert not (data / "MESE_T2_dicom_data").exists()
