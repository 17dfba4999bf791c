#!/usr/bin/env python3
"""Regenerates Resources/SampleData/MESE_T2_knee_echo1.nrrd, the demo image kept in the repository.

Source: the de-identified GE multi-echo knee series ``MESE_T2_dicom_data_anon`` of the ``mskt==0.1.22`` sdist
(MIT per its PyPI metadata), fetched into the cache by ``trainer.mskt.fetch_mskt``. We keep only the first echo
(TE 6.312 ms), as int16 in a gzip-compressed NRRD, with the series' exact geometry (oblique sagittal, 0.625 x
0.625 x 4 mm) and no DICOM header fields, and record its SHA-256 for Slicer's SampleData registration.

    python scripts/make_sample.py            # writes the NRRD and its .sha256 beside it
    python scripts/make_sample.py --check    # verifies the committed files against a fresh derivation
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "KneeSegmentation"))
sys.path.insert(0, str(ROOT))

from KneeSegmentationLib.segment.io import ECHO_TIME_TAG, read_image, write_image  # noqa: E402
from trainer.mskt import fetch_mskt  # noqa: E402

SAMPLE_DIR = ROOT / "Resources" / "SampleData"
SAMPLE_NAME = "MESE_T2_knee_echo1.nrrd"
ECHO_INDEX = 0
GEOMETRY_ATOL = 1e-12  # NRRD stores doubles as text: the round trip differs in the last bit at most


def derive(dicom_dir: Path) -> sitk.Image:
    """The first echo as int16, geometry untouched, only the echo time kept as metadata."""
    image = read_image(dicom_dir, echo=ECHO_INDEX)
    values = sitk.GetArrayViewFromImage(image)
    if not (np.all(values == np.round(values)) and values.min() >= -32768 and values.max() <= 32767):
        raise SystemExit("the echo's values are not int16 integers; refusing to change them")
    sample = sitk.Cast(image, sitk.sitkInt16)
    sample.SetMetaData(ECHO_TIME_TAG, image.GetMetaData(ECHO_TIME_TAG))
    return sample


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dicom", type=Path, help="the MESE_T2_dicom_data_anon folder (default: fetch_mskt cache)")
    parser.add_argument("--out", type=Path, default=SAMPLE_DIR, help="output folder")
    parser.add_argument("--check", action="store_true", help="compare a fresh derivation with the committed file")
    args = parser.parse_args()
    dicom = args.dicom or fetch_mskt() / "MESE_T2_dicom_data_anon"
    if dicom.name != "MESE_T2_dicom_data_anon":
        raise SystemExit("use the de-identified series MESE_T2_dicom_data_anon only")
    sample = derive(dicom)
    if args.check:
        committed = sitk.ReadImage(str(args.out / SAMPLE_NAME))
        same = (np.array_equal(sitk.GetArrayViewFromImage(committed), sitk.GetArrayViewFromImage(sample))
                and all(np.allclose(getattr(committed, f)(), getattr(sample, f)(), rtol=0, atol=GEOMETRY_ATOL)
                        for f in ("GetOrigin", "GetSpacing", "GetDirection")))
        recorded = (args.out / f"{SAMPLE_NAME}.sha256").read_text().split()[0]
        print(f"pixels and geometry identical (to 1e-12): {same}; recorded SHA-256 matches file: "
              f"{recorded == sha256(args.out / SAMPLE_NAME)}")
        sys.exit(0 if same and recorded == sha256(args.out / SAMPLE_NAME) else 1)
    path = write_image(sample, args.out / SAMPLE_NAME)
    digest = sha256(path)
    checksum = args.out / f"{SAMPLE_NAME}.sha256"
    checksum.write_text(f"{digest}  {SAMPLE_NAME}\n")
    print(f"{path} ({path.stat().st_size / 1e6:.2f} MB, size {sample.GetSize()}, spacing "
          f"{tuple(round(s, 4) for s in sample.GetSpacing())}) SHA-256 {digest}")


if __name__ == "__main__":
    main()
