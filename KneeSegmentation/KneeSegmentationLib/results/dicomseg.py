"""DICOM SEG of a result, referencing the source series (highdicom; the optional extra ``kneesegmentation[dicom]``).

A DICOM SEG names the images it segments, so it can only be written for an image read from a DICOM series:
``check_dicom_seg`` says so in one line before any work starts, and also when highdicom is not installed.
Each found bone becomes a segment with its SNOMED CT category and type (the same codes as the ``.seg.nrrd``
terminology), the knee as anatomic region with the laterality as its modifier, the model as the algorithm.

    check_dicom_seg(Path("series/"), Path("knee.dcm"))
    write_dicom_seg(labelmap, Path("series/"), echo=0, path=Path("knee.dcm"), model_tag="knee-bones/v2",
                    laterality="right")
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..constants import BONES, CATEGORY_CODE, CATEGORY_MEANING, SNOMED_SCHEME
from ..errors import InputError, KneeSegError
from ..files import write_atomically
from ..segment.io import _echo_groups, _has_image_suffix
from .terminology import KNEE_CODE, KNEE_MEANING, LATERALITY_CODES

DICOM_SEG_SUFFIXES = (".dcm",)
MISSING = ("--dicom-seg needs highdicom, an optional extra: pip install 'kneesegmentation[dicom]' "
           "(or pip install highdicom)")


def is_dicom_input(image_path: Path) -> bool:
    return image_path.is_dir() or not _has_image_suffix(image_path)


def check_dicom_seg(image_path: Path, output: Path) -> None:
    """Refuses, before the work, what cannot end in a DICOM SEG: a non-DICOM input, a bad suffix, no highdicom."""
    if not output.name.lower().endswith(DICOM_SEG_SUFFIXES):
        raise InputError(f"{output.name}: the DICOM SEG output must end with .dcm")
    if not is_dicom_input(image_path):
        raise InputError(f"--dicom-seg needs a DICOM series as input (it references the source images); "
                         f"{image_path.name} is not DICOM: write .seg.nrrd or a labelmap instead")
    try:
        import highdicom  # noqa: F401
    except ImportError:
        raise KneeSegError(MISSING) from None


def source_files(image_path: Path, echo: int | None) -> list[str]:
    """The files of the echo that ``io.read_image`` read, in the order of the image's slices."""
    groups = _echo_groups(image_path)
    return [s.file for s in groups[0 if echo is None else echo].slices]


def write_dicom_seg(labelmap: sitk.Image, image_path: Path, echo: int | None, path: Path,
                    model_tag: str = "", laterality: str | None = None) -> Path:
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    from .. import __version__

    datasets = [pydicom.dcmread(f) for f in source_files(Path(image_path), echo)]
    labels = sitk.GetArrayFromImage(labelmap)
    if labels.shape != (len(datasets), int(datasets[0].Rows), int(datasets[0].Columns)):
        raise InputError("the labelmap does not match the DICOM series it should reference")
    found = [b for b in BONES if np.any(labels == b.label)]
    if not found:
        raise InputError("no bone was found: a DICOM SEG needs at least one segment")
    numbered = np.zeros(labels.shape, np.uint8)  # DICOM segment numbers run 1..n over the found bones
    algorithm = hd.AlgorithmIdentificationSequence(name="KneeSegmentation", version=model_tag or __version__,
                                                   family=codes.cid7162.ArtificialIntelligence)
    descriptions = []
    for number, bone in enumerate(found, start=1):
        numbered[labels == bone.label] = number
        region = hd.sr.CodedConcept(KNEE_CODE, SNOMED_SCHEME, KNEE_MEANING)
        description = hd.seg.SegmentDescription(
            segment_number=number, segment_label=bone.name,
            segmented_property_category=hd.sr.CodedConcept(CATEGORY_CODE, SNOMED_SCHEME, CATEGORY_MEANING),
            segmented_property_type=hd.sr.CodedConcept(bone.snomed_code, SNOMED_SCHEME, bone.snomed_meaning),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
            tracking_uid=hd.UID(), tracking_id=bone.name, anatomic_regions=[region],
            display_color=hd.color.CIELabColor.from_rgb(*(round(c * 255) for c in bone.color)))
        if laterality is not None:
            code, meaning = LATERALITY_CODES[laterality]
            description.AnatomicRegionSequence[0].AnatomicRegionModifierSequence = [
                hd.sr.CodedConcept(code, SNOMED_SCHEME, meaning)]
        descriptions.append(description)
    seg = hd.seg.Segmentation(
        source_images=datasets, pixel_array=numbered, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=9000,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="KneeSegmentation",
        manufacturer_model_name=model_tag or "KneeSegmentation", software_versions=__version__,
        device_serial_number="0", series_description="KneeSegmentation bones")
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomically(path, lambda tmp: seg.save_as(os.fspath(tmp)), suffix=".dcm")
