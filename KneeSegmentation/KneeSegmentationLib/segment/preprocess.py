"""Geometry and intensity preparation shared by inference and training.

The network always sees the same kind of grid: axes along the patient axes (identity direction in ITK's LPS
frame), isotropic ``spacing_mm``, a box of ``patch_size`` voxels around the knee, intensities normalized by
robust percentiles of the voxels that lie inside the acquired image. Sagittal, coronal, axial and oblique
acquisitions all become this grid, so one set of weights serves every orientation. The trainer renders its
synthetic images onto the same grid and normalizes them with ``normalize`` from here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..limits import check_model_grid

IDENTITY_3D = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
# After normalization the image lies mostly in [0, 1]; outliers are clipped to this range so that a few
# hot voxels (flow artefacts, fat at the coil) cannot dominate.
NORMALIZED_RANGE = (-0.25, 1.5)
# An image up to this much larger than the window is segmented in one pass on an enlarged window (the network
# is fully convolutional), which costs less than overlapping tiles; a larger one is tiled whole.
SINGLE_PASS_GROWTH = 4 / 3  # 128 voxels for a 96-voxel window: a 190 mm field of view at 1.5 mm
JOINT_DISTANCE_MM = 6.0  # femur voxels this close to the tibia make the femorotibial joint


@dataclass(frozen=True)
class RoiBox:
    """An axis-aligned box in patient (LPS) millimetres: where the network should look."""

    center_lps: tuple[float, float, float]
    size_mm: tuple[float, float, float]

    def __post_init__(self) -> None:
        if len(self.center_lps) != 3 or len(self.size_mm) != 3:
            raise InputError("an ROI needs a 3D centre and a 3D size")
        if not all(np.isfinite(self.center_lps)) or not all(s > 0 and np.isfinite(s) for s in self.size_mm):
            raise InputError(f"invalid ROI: centre {self.center_lps}, size {self.size_mm} (sizes must be > 0)")


def physical_bounds(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned LPS bounding box (min corner, max corner) of the image's voxel centres."""
    size = np.array(image.GetSize())
    corners = np.array([[i, j, k] for i in (0, size[0] - 1) for j in (0, size[1] - 1) for k in (0, size[2] - 1)])
    pts = np.array([image.TransformContinuousIndexToPhysicalPoint(c.astype(float).tolist()) for c in corners])
    return pts.min(axis=0), pts.max(axis=0)


def image_center(image: sitk.Image) -> np.ndarray:
    lo, hi = physical_bounds(image)
    return (lo + hi) / 2


def model_grid_around(center_lps: Sequence[float], spacing: Sequence[float], size: Sequence[int]) -> sitk.Image:
    """An empty reference grid (identity direction) of ``size`` voxels at ``spacing`` centred on ``center_lps``."""
    spacing = np.asarray(spacing, float)
    size = np.asarray(size, int)
    check_model_grid(size.tolist(), spacing.tolist(), "the region to segment")  # before allocating it
    origin = np.asarray(center_lps, float) - spacing * (size - 1) / 2.0
    ref = sitk.Image([int(s) for s in size], sitk.sitkUInt8)
    ref.SetSpacing(spacing.tolist())
    ref.SetOrigin(origin.tolist())
    ref.SetDirection(IDENTITY_3D)
    return ref


def whole_image_grid(image: sitk.Image, spacing: Sequence[float], patch: Sequence[int], divisor: int,
                     growth: float = SINGLE_PASS_GROWTH) -> tuple[sitk.Image, tuple[int, int, int]]:
    """(grid, window): a grid at the model's ``spacing`` covering the whole image (sizes rounded up to
    multiples of ``divisor``, never below ``patch``) and the window to run on it: the whole grid when it is at
    most ``growth`` x ``patch`` (one pass), else ``patch`` (overlapping tiles). Every voxel of the image is
    seen at the scale the network learnt: a tall image's shafts are segmented like its joint.

    ``spacing`` is (x, y, z) like SimpleITK's; ``patch`` and the window returned are (z, y, x), the order of the
    arrays the network sees (see ``Preprocessing``)."""
    spacing = np.asarray(spacing, float)
    patch_xyz = np.asarray(patch, int)[::-1]
    lo, hi = physical_bounds(image)
    extent = hi - lo + np.array(image.GetSpacing()).max()
    size = np.ceil(extent / spacing).astype(int) + 1
    size = np.maximum(np.ceil(size / divisor).astype(int) * divisor, patch_xyz)
    grid = model_grid_around((lo + hi) / 2, spacing, size)
    single = not np.any(size > patch_xyz * growth)
    window = tuple(int(s) for s in (size[::-1] if single else patch))
    return grid, window


def joint_center(labels: np.ndarray, grid: sitk.Image) -> tuple[np.ndarray | None, str | None]:
    """Centre (LPS) of the femur voxels within ``JOINT_DISTANCE_MM`` of the tibia on ``grid``; falls back to
    the bones' centroid, and to (None, reason) when there is no femur or tibia."""
    from ..constants import FEMUR, TIBIA

    femur, tibia = labels == FEMUR.label, labels == TIBIA.label
    if femur.any() and tibia.any():
        tib = sitk.GetImageFromArray(tibia.astype(np.uint8))
        tib.CopyInformation(grid)
        dist = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(tib, insideIsPositive=False, squaredDistance=False,
                                                                  useImageSpacing=True))
        contact = femur & (dist <= JOINT_DISTANCE_MM)
        pts = np.argwhere(contact if contact.any() else (femur | tibia))
    elif femur.any() or tibia.any():
        pts = np.argwhere(femur | tibia)
    else:
        return None, "no femur or tibia found"
    zyx = pts.mean(axis=0)
    return np.array(grid.TransformContinuousIndexToPhysicalPoint(zyx[::-1].tolist())), None


def resample_to_grid(
    image: sitk.Image,
    reference: sitk.Image,
    interpolator: int = sitk.sitkLinear,
    default: float = 0.0,
    pixel_type: int | None = None,
) -> sitk.Image:
    """``image`` resampled onto ``reference``'s grid (no transform: both live in the same patient space)."""
    out_type = image.GetPixelID() if pixel_type is None else pixel_type
    return sitk.Resample(image, reference, sitk.Transform(), interpolator, float(default), out_type)


def inside_mask(image: sitk.Image, reference: sitk.Image) -> np.ndarray:
    """Boolean array (z, y, x) of the reference voxels that fall inside the acquired image."""
    ones = sitk.Image(image.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(image)
    return sitk.GetArrayFromImage(resample_to_grid(ones, reference, sitk.sitkNearestNeighbor, 0)) > 0


def normalize(
    array: np.ndarray,
    mask: np.ndarray | None = None,
    lower_percentile: float = 1.0,
    upper_percentile: float = 99.0,
) -> np.ndarray:
    """Maps the ``lower``/``upper`` percentiles of the voxels in ``mask`` to 0 and 1, clipped to
    ``NORMALIZED_RANGE``; voxels outside ``mask`` become 0. Robust to contrast, scanner scaling and
    hot spots; the same function normalizes synthetic training images."""
    array = np.asarray(array, dtype=np.float32)
    mask = np.ones(array.shape, bool) if mask is None else np.asarray(mask, bool)
    values = array[mask]
    if values.size == 0:
        raise InputError("the region to segment lies outside the image (no voxels to normalize)")
    lo, hi = np.percentile(values, [lower_percentile, upper_percentile])
    if not np.isfinite(lo) or not np.isfinite(hi) or hi - lo <= 1e-6 * max(abs(hi), 1.0):
        raise InputError("the image is constant in the region to segment; there is nothing to see")
    out = ((array - lo) / (hi - lo)).astype(np.float32)
    np.clip(out, *NORMALIZED_RANGE, out=out)
    out[~mask] = 0.0
    return out


def prepare_input(image: sitk.Image, reference: sitk.Image, normalization: dict[str, float]) -> np.ndarray:
    """The network's input on ``reference``'s grid: resampled linearly and normalized, shape (z, y, x)."""
    resampled = resample_to_grid(image, reference, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    mask = inside_mask(image, reference)
    return normalize(sitk.GetArrayFromImage(resampled), mask, **normalization)
