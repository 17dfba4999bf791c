"""Which knee is it, and which bones were found: read from the result, in patient (LPS) coordinates.

The fibula lies lateral to the tibia. In LPS, +x points to the patient's Left, so a fibula centred at larger x
than the tibia is on the left side of the tibia, which is lateral only in a left knee. A bone smaller than
``MIN_BONE_ML`` is not a bone the model found but a speck: it is removed and reported "not found".

    labels, missing = drop_specks(labels, spacing)           # numpy (z, y, x) labelmap
    side = laterality_of(labelmap)                           # "left", "right" or None
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..constants import BONES, FIBULA, TIBIA

MIN_BONE_ML = 0.5  # the smallest bone we segment (a fibular head in a tight field of view) is several ml
MIN_OFFSET_MM = 3.0  # fibula and tibia centres closer than this along x: the side cannot be told


def drop_specks(labels: np.ndarray, spacing, min_ml: float = MIN_BONE_ML) -> tuple[np.ndarray, list[str]]:
    """``labels`` without the bones smaller than ``min_ml`` (set to background) and the names of all bones
    absent from the result (the dropped ones and those never predicted), in ``BONES`` order."""
    voxel_ml = float(np.prod(spacing)) / 1000.0
    counts = np.bincount(labels.ravel(), minlength=max(b.label for b in BONES) + 1)
    missing = []
    out = labels
    for bone in BONES:
        if counts[bone.label] * voxel_ml < min_ml:
            if counts[bone.label]:
                out = out.copy() if out is labels else out
                out[out == bone.label] = 0
            missing.append(bone.name)
    return out, missing


def _centroid_lps(labelmap: sitk.Image, array: np.ndarray, label: int) -> np.ndarray | None:
    idx = np.argwhere(array == label)  # (z, y, x)
    if not idx.size:
        return None
    mean_xyz = idx.mean(axis=0)[::-1]
    return np.asarray(labelmap.TransformContinuousIndexToPhysicalPoint([float(v) for v in mean_xyz]))


def laterality_of(labelmap: sitk.Image) -> str | None:
    """"left" or "right" from the fibula's side of the tibia; None when either bone is missing or their
    centres are too close along the patient's left-right axis."""
    array = sitk.GetArrayViewFromImage(labelmap)
    tibia, fibula = _centroid_lps(labelmap, array, TIBIA.label), _centroid_lps(labelmap, array, FIBULA.label)
    if tibia is None or fibula is None:
        return None
    offset = float(fibula[0] - tibia[0])
    if abs(offset) < MIN_OFFSET_MM:
        return None
    return "left" if offset > 0 else "right"
