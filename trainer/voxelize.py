"""Closed bone surfaces voxelized on a knee crop, the overlap refusal, and approximate cartilage.

Refusals: the model's bones interpenetrate far more than expected. Even the MEAN shape's femoral condyles
sink ~16 mm into the tibial plateau (femur/tibia overlap 36 ml: the tibia+fibula must move 16-18 mm distally
to clear it), and with every mode at N(0, 1) only 32 of 200 draws (16 %) stay under ``OVERLAP_LIMIT_ML``
(femur/tibia overlap: median 39 ml, 90th percentile 88 ml, max 112 ml; reasons among the 168 refused:
femur/tibia 168, femur/fibula 36, femur/patella 15, patella/tibia 1). The joint's configuration varies
widely across the 26 limbs. Accepted N(0, 1) draws, cropped: femur 150-180 ml, tibia 110-120 ml, patella
8-11 ml, fibula 11-14 ml, cartilage 0.5-3 ml each (only where the bones meet within 6 mm).
The mean shape: whole closed meshes femur 483 ml (the whole femur, closed at the hip: no cap needed), tibia
304 ml, patella 16.2 ml, fibula 51.6 ml; voxelized in the knee crop: femur 220, tibia 181, patella 16.2,
fibula 20.0 ml (but the mean itself is refused for its 36 ml femur/tibia overlap).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from KneeSegmentationLib.errors import DatasetError

OVERLAP_LIMIT_ML = 1.0
HALF_LENGTH_MM = 130.0  # kept along the long axis on each side of the femorotibial joint
MARGIN_MM = 40.0  # around the bones' cross-section
CARTILAGE_MM = 2.0  # cartilage: outside a bone, within this of its surface ...
CARTILAGE_REACH_MM = 6.0  # ... and within this of the opposing bone
BONE_LABELS = {"femur": 5, "tibia": 6, "patella": 7, "fibula": 8}
CARTILAGE = (("femur", ("tibia", "patella"), 1), ("tibia", ("femur",), 2), ("patella", ("femur",), 4))


class DrawRefused(DatasetError):
    """A shape-model draw whose bones interpenetrate by more than ``OVERLAP_LIMIT_ML``."""

    def __init__(self, message: str, overlaps: dict[str, float]):
        super().__init__(message)
        self.overlaps = overlaps


def _stencil(points: np.ndarray, triangles: np.ndarray, origin: np.ndarray, spacing: float,
             lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Inside mask (z, y, x) of a closed surface on voxels lo..hi (inclusive indices) of the grid."""
    import vtk
    from vtk.util.numpy_support import numpy_to_vtk, numpy_to_vtkIdTypeArray, vtk_to_numpy

    poly = vtk.vtkPolyData()
    vpts = vtk.vtkPoints()
    vpts.SetData(numpy_to_vtk(np.ascontiguousarray(points, float), deep=True))
    poly.SetPoints(vpts)
    cells = vtk.vtkCellArray()
    conn = numpy_to_vtkIdTypeArray(np.ascontiguousarray(triangles.ravel(), np.int64), deep=True)
    offsets = numpy_to_vtkIdTypeArray(np.arange(0, 3 * len(triangles) + 1, 3, dtype=np.int64), deep=True)
    cells.SetData(offsets, conn)
    poly.SetPolys(cells)
    stencil = vtk.vtkPolyDataToImageStencil()
    stencil.SetInputData(poly)
    stencil.SetOutputOrigin(*origin.tolist())
    stencil.SetOutputSpacing(spacing, spacing, spacing)
    stencil.SetOutputWholeExtent(int(lo[0]), int(hi[0]), int(lo[1]), int(hi[1]), int(lo[2]), int(hi[2]))
    stencil.SetTolerance(0)
    image = vtk.vtkImageStencilToImage()
    image.SetInputConnection(stencil.GetOutputPort())
    image.SetInsideValue(1)
    image.SetOutsideValue(0)
    image.SetOutputScalarTypeToUnsignedChar()
    image.Update()
    shape = (hi - lo + 1)[::-1]
    return vtk_to_numpy(image.GetOutput().GetPointData().GetScalars()).reshape(tuple(shape)).astype(bool)


@dataclass
class Crop:
    """The identity-direction LPS grid a draw is voxelized on."""

    origin: np.ndarray  # LPS of voxel (0, 0, 0)
    spacing: float
    size: np.ndarray  # (x, y, z)
    joint_z: float


def knee_crop(surfaces: dict[str, tuple[np.ndarray, np.ndarray]], spacing: float = 1.0) -> Crop:
    """±HALF_LENGTH_MM along z around the femorotibial joint, the bones' cross-section there + MARGIN_MM."""
    femur, tibia = surfaces["femur"][0], surfaces["tibia"][0]
    joint_z = 0.5 * (femur[:, 2].min() + tibia[:, 2].max())
    z0, z1 = joint_z - HALF_LENGTH_MM, joint_z + HALF_LENGTH_MM
    near = np.concatenate([p[(p[:, 2] >= z0) & (p[:, 2] <= z1)] for p, _ in surfaces.values()])
    lo = np.array([*(near[:, :2].min(0) - MARGIN_MM), z0])
    hi = np.array([*(near[:, :2].max(0) + MARGIN_MM), z1])
    origin = np.floor(lo / spacing) * spacing
    size = (np.ceil((hi - origin) / spacing) + 1).astype(int)
    return Crop(origin, float(spacing), size, float(joint_z))


def voxelize(surfaces: dict[str, tuple[np.ndarray, np.ndarray]], crop: Crop) -> dict[str, np.ndarray]:
    """bone -> boolean mask (z, y, x) on ``crop``."""
    masks = {}
    shape = tuple(crop.size[::-1])
    for bone, (pts, tris) in surfaces.items():
        lo = np.floor((pts.min(0) - crop.origin) / crop.spacing).astype(int) - 1
        hi = np.ceil((pts.max(0) - crop.origin) / crop.spacing).astype(int) + 1
        lo, hi = np.maximum(lo, 0), np.minimum(hi, crop.size - 1)
        mask = np.zeros(shape, bool)
        if np.all(hi >= lo):
            mask[lo[2]:hi[2] + 1, lo[1]:hi[1] + 1, lo[0]:hi[0] + 1] = _stencil(pts, tris, crop.origin, crop.spacing,
                                                                               lo, hi)
        masks[bone] = mask
    return masks


def overlap_ml(masks: dict[str, np.ndarray], spacing: float = 1.0) -> dict[str, float]:
    """Pairwise overlap volumes (ml) of the bone masks, keyed "a/b"."""
    names = list(masks)
    voxel_ml = spacing ** 3 / 1000.0
    return {f"{a}/{b}": float(np.count_nonzero(masks[a] & masks[b]) * voxel_ml)
            for i, a in enumerate(names) for b in names[i + 1:]}


def check_overlap(masks: dict[str, np.ndarray], spacing: float = 1.0,
                  limit_ml: float = OVERLAP_LIMIT_ML) -> dict[str, float]:
    """The pairwise overlaps; raises DrawRefused if any exceeds ``limit_ml``."""
    overlaps = overlap_ml(masks, spacing)
    bad = {k: v for k, v in overlaps.items() if v > limit_ml}
    if bad:
        raise DrawRefused("bones overlap: " + ", ".join(f"{k} {v:.1f} ml" for k, v in sorted(bad.items()))
                          + f" (limit {limit_ml} ml)", bad)
    return overlaps


def _distance_outside(mask: np.ndarray, spacing: float) -> np.ndarray:
    if not mask.any():
        return np.full(mask.shape, np.inf, np.float32)
    img = sitk.GetImageFromArray(mask.astype(np.uint8))
    img.SetSpacing((spacing,) * 3)
    return sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(img, insideIsPositive=False, squaredDistance=False,
                                                               useImageSpacing=True))


def _box(mask: np.ndarray) -> np.ndarray | None:
    idx = np.argwhere(mask)
    return None if not len(idx) else np.array([idx.min(0), idx.max(0)])


def label_map(masks: dict[str, np.ndarray], crop: Crop) -> sitk.Image:
    """mskt-valued uint8 map: bones 5-8 and approximate femoral (1), tibial (2) and patellar (4) cartilage."""
    arr = np.zeros(tuple(crop.size[::-1]), np.uint8)
    for bone in ("fibula", "patella", "tibia", "femur"):  # residual (<= limit) overlaps go to the later bone
        arr[masks[bone]] = BONE_LABELS[bone]
    bone_any = arr > 0
    # Cartilage lies where the femur meets the tibia or patella: compute distances only in that box.
    reach = int(np.ceil((CARTILAGE_REACH_MM + CARTILAGE_MM) / crop.spacing)) + 1
    boxes = {b: _box(masks[b]) for b in ("femur", "tibia", "patella")}
    parts = []
    for other in ("tibia", "patella"):
        if boxes["femur"] is None or boxes[other] is None:
            continue
        lo = np.maximum(boxes["femur"][0], boxes[other][0]) - reach
        hi = np.minimum(boxes["femur"][1], boxes[other][1]) + reach
        if np.all(hi >= lo):
            parts.append((lo, hi))
    if not parts:
        return _image(arr, crop)
    lo = np.maximum(np.min([p[0] for p in parts], 0), 0)
    hi = np.minimum(np.max([p[1] for p in parts], 0), np.array(arr.shape) - 1)
    sl = tuple(slice(a, b + 1) for a, b in zip(lo, hi))
    dist = {b: _distance_outside(masks[b][sl], crop.spacing) for b in ("femur", "tibia", "patella")}
    free = ~bone_any[sl]
    nearest = np.argmin(np.stack([dist["femur"], dist["tibia"], dist["patella"]]), axis=0)
    sub = arr[sl]
    for k, (bone, opposite, value) in enumerate(CARTILAGE):
        near_other = np.min(np.stack([dist[o] for o in opposite]), axis=0) <= CARTILAGE_REACH_MM
        sub[free & (dist[bone] <= CARTILAGE_MM) & near_other & (nearest == k)] = value
    return _image(arr, crop)


def _image(arr: np.ndarray, crop: Crop) -> sitk.Image:
    image = sitk.GetImageFromArray(arr)
    image.SetOrigin(crop.origin.tolist())
    image.SetSpacing((crop.spacing,) * 3)
    image.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    return image
