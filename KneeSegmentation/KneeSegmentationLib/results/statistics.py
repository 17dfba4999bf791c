"""Per-segment statistics of a result: volume, voxel count, mean intensity, found or not, and the knee's side.

    stats = segment_statistics(image, labelmap, laterality="right", model_tag="knee-bones/v2")
    write_statistics(stats, "knee.json")    # or "knee.csv": one row per segment
    result_line(result)                     # "Femur 218.8 ml, Tibia 153.7 ml; right knee; not found: Fibula"

"found" is False for a bone absent from the labelmap (``laterality.drop_specks`` removed the specks before).
Mean intensity is of the image as given (before N4), in its own units.
"""
from __future__ import annotations

import csv
import io as _io
import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..constants import BONES
from ..errors import InputError
from ..files import write_text_atomically

STATISTICS_SUFFIXES = (".json", ".csv")
CSV_COLUMNS = ("segment", "label", "found", "voxels", "volume_ml", "mean_intensity", "laterality")


def segment_statistics(image: sitk.Image | None, labelmap: sitk.Image, laterality: str | None = None,
                       model_tag: str | None = None) -> dict:
    """The statistics as a JSON-ready dict: ``segments`` (one entry per bone), ``laterality``, ``model``."""
    labels = sitk.GetArrayViewFromImage(labelmap)
    voxel_ml = float(np.prod(labelmap.GetSpacing())) / 1000.0
    values = sitk.GetArrayViewFromImage(image) if image is not None else None
    flat = labels.ravel()
    counts = np.bincount(flat, minlength=max(b.label for b in BONES) + 1)
    sums = np.bincount(flat, weights=values.ravel().astype(np.float64), minlength=len(counts)) \
        if values is not None else None
    segments = []
    for bone in BONES:
        n = int(counts[bone.label])
        segments.append({"segment": bone.name, "label": bone.label, "found": n > 0, "voxels": n,
                         "volume_ml": round(n * voxel_ml, 3),
                         "mean_intensity": round(float(sums[bone.label] / n), 3) if n and sums is not None else None,
                         "laterality": laterality})
    return {"laterality": laterality, "model": model_tag, "voxel_ml": voxel_ml, "segments": segments}


def check_statistics_path(path: Path) -> None:
    if not path.name.lower().endswith(STATISTICS_SUFFIXES):
        raise InputError(f"{path.name}: statistics are written as .json or .csv")


def write_statistics(stats: dict, path: str | Path) -> Path:
    path = Path(path)
    check_statistics_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.lower().endswith(".json"):
        return write_text_atomically(path, json.dumps(stats, indent=2) + "\n")
    buffer = _io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in stats["segments"]:
        writer.writerow({k: ("" if row[k] is None else row[k]) for k in CSV_COLUMNS})
    return write_text_atomically(path, buffer.getvalue())


def absent_bones(result) -> list[str]:
    """What a result lacks, as ``kneeseg``, the panel and a batch report say it: ``not found: Fibula`` (looked
    for, absent) and ``not segmented by this model: Patella`` (a model without that output)."""
    return ([f"not found: {', '.join(result.not_found)}"] * bool(result.not_found)
            + [f"not segmented by this model: {', '.join(result.not_segmented)}"] * bool(result.not_segmented))


def result_line(result) -> str:
    """A segmentation result in one line, as ``kneeseg segment`` prints it and the Slicer panel shows it:
    ``Femur 218.8 ml, Tibia 153.7 ml; right knee; not found: Fibula`` (then ``absent_bones``). ``result`` is a
    ``pipeline.SegmentationResult``."""
    stats = segment_statistics(None, result.labelmap, result.laterality)
    absent = set(result.not_found) | set(result.not_segmented)
    found = [f"{s['segment']} {s['volume_ml']:.1f} ml" for s in stats["segments"] if s["segment"] not in absent]
    parts = [", ".join(found) or "no bone found", f"{result.laterality} knee" if result.laterality else "side unknown"]
    return "; ".join(parts + absent_bones(result))
