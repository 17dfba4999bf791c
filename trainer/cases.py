"""Corrected cases (what the module saves after a user fixes a segmentation, see
``KneeSegmentationLib.learn.cases``) for fine-tuning and evaluation.

A case is a folder holding ``image.nrrd`` (the image as segmented), ``label.nrrd`` (uint8, values 0–3 in
the model's classes, same geometry as the image) and ``case.json`` (metadata; any JSON object). Every
problem is reported as a ``DatasetError`` that names the case and what is wrong with it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from KneeSegmentationLib.learn.cases import IMAGE_FILE, LABEL_FILE, META_FILE, geometry_mismatch
from KneeSegmentationLib.constants import NUM_CLASSES
from KneeSegmentationLib.errors import DatasetError
from KneeSegmentationLib.files import read_json_object
from KneeSegmentationLib.models.plan import per_axis_spacing
from KneeSegmentationLib.segment.preprocess import model_grid_around, prepare_input, resample_to_grid

from .generator import Sample

CASE_CENTER_JITTER_MM = 20.0  # crops of a case are centred on its bones plus this uniform jitter


@dataclass
class Case:
    id: str
    image: sitk.Image
    label: sitk.Image
    meta: dict


def _read(path: Path, what: str, case: str) -> sitk.Image:
    if not path.is_file():
        raise DatasetError(f"case {case}: {what} {path.name} is missing")
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise DatasetError(f"case {case}: {path.name} is unreadable ({str(e).strip().splitlines()[-1]})") from e


def load_case(folder: Path) -> Case:
    """Reads and checks one case folder."""
    folder = Path(folder)
    name = folder.name
    image = _read(folder / IMAGE_FILE, "image", name)
    label = _read(folder / LABEL_FILE, "label map", name)
    meta = read_json_object(folder / META_FILE, DatasetError, f"case {name}'s {META_FILE}")
    if image.GetDimension() != 3 or label.GetDimension() != 3:
        raise DatasetError(f"case {name}: image and label map must be 3D")
    if label.GetPixelID() != sitk.sitkUInt8:
        raise DatasetError(f"case {name}: the label map must be uint8, not {label.GetPixelIDTypeAsString()}")
    mismatch = geometry_mismatch(image, label)
    if mismatch:
        raise DatasetError(f"case {name}: image and label map are on different grids ({mismatch})")
    values = np.unique(sitk.GetArrayViewFromImage(label))
    if values.max() >= NUM_CLASSES:
        raise DatasetError(f"case {name}: label values {values.tolist()} outside 0–{NUM_CLASSES - 1}")
    if not (values > 0).any():
        raise DatasetError(f"case {name}: the label map is empty (no bone labelled)")
    return Case(str(meta.get("id", name)), sitk.Cast(image, sitk.sitkFloat32), label, meta)


def load_cases(folder: Path) -> list[Case]:
    """All case folders under ``folder`` (sorted by name); at least one is required."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"cases folder {folder} not found")
    dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not dirs:
        raise DatasetError(f"{folder} holds no case folders (each needs {IMAGE_FILE}, {LABEL_FILE}, {META_FILE})")
    return [load_case(d) for d in dirs]


class CaseSampler:
    """Random crops of corrected cases on the model grid, prepared exactly like at inference."""

    def __init__(self, cases: list[Case], spacing: float | Sequence[float], crop: tuple[int, int, int],
                 normalization: dict) -> None:
        self.cases, self.crop, self.normalization = cases, tuple(crop), normalization
        self.spacing = per_axis_spacing(spacing)  # x, y, z, like a plan's
        self._bone_centers = []
        for c in cases:
            idx = np.argwhere(sitk.GetArrayViewFromImage(c.label) > 0).mean(axis=0)[::-1]
            self._bone_centers.append(np.array(c.label.TransformContinuousIndexToPhysicalPoint(idx.tolist())))

    def sample(self, rng: np.random.Generator) -> Sample:
        i = int(rng.integers(len(self.cases)))
        case = self.cases[i]
        center = self._bone_centers[i] + rng.uniform(-CASE_CENTER_JITTER_MM, CASE_CENTER_JITTER_MM, 3)
        grid = model_grid_around(center, self.spacing, self.crop[::-1])  # sitk size is (x, y, z)
        image = prepare_input(case.image, grid, self.normalization)
        label = sitk.GetArrayFromImage(resample_to_grid(case.label, grid, sitk.sitkNearestNeighbor, 0))
        label = label.astype(np.int64)
        if rng.random() < 0.5:  # mirror left/right (x is the last array axis)
            image, label = image[..., ::-1].copy(), label[..., ::-1].copy()
        return Sample(image, label, case.id, {"case": case.id, "center": center.tolist()})
