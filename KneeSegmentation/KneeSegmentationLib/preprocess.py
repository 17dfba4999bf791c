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

from .errors import InputError

IDENTITY_3D = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
# After normalization the image lies mostly in [0, 1]; outliers are clipped to this range so that a few
# hot voxels (flow artefacts, fat at the coil) cannot dominate.
NORMALIZED_RANGE = (-0.25, 1.5)
# The overview pass that locates the knee in a large field of view runs at most this much coarser than the
# model's spacing; beyond that it tiles windows instead of shrinking the anatomy further.
OVERVIEW_MAX_FACTOR = 2.0
# An image up to this much larger than the window is segmented in one pass on an enlarged window (the network
# is fully convolutional), which costs less than an overview pass plus a fine pass.
SINGLE_PASS_GROWTH = 4 / 3  # 128 voxels for a 96-voxel window: a 190 mm field of view at 1.5 mm


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
    origin = np.asarray(center_lps, float) - spacing * (size - 1) / 2.0
    ref = sitk.Image([int(s) for s in size], sitk.sitkUInt8)
    ref.SetSpacing(spacing.tolist())
    ref.SetOrigin(origin.tolist())
    ref.SetDirection(IDENTITY_3D)
    return ref


def single_window_grid(image: sitk.Image, spacing: float, patch: Sequence[int], divisor: int,
                       growth: float = SINGLE_PASS_GROWTH) -> sitk.Image | None:
    """A grid at ``spacing`` covering the whole image in one window at most ``growth`` x ``patch`` (sizes
    rounded up to multiples of ``divisor``, never below ``patch``); None if the image is larger."""
    lo, hi = physical_bounds(image)
    extent = hi - lo + np.array(image.GetSpacing()).max()
    size = np.ceil(extent / spacing).astype(int) + 1
    size = np.maximum(np.ceil(size / divisor).astype(int) * divisor, np.asarray(patch))
    if np.any(size > np.asarray(patch) * growth):
        return None
    return model_grid_around((lo + hi) / 2, (spacing,) * 3, size)


def grid_covering(image: sitk.Image, min_spacing: float, max_size: Sequence[int],
                  max_factor: float = OVERVIEW_MAX_FACTOR) -> sitk.Image:
    """A grid showing the whole image: ``max_size`` voxels at ``min_spacing`` if the image fits, else coarser,
    but never coarser than ``max_factor`` x ``min_spacing`` (a network sees anatomy at the scale it learnt
    within about that factor); a still larger image gets a grid of more voxels, tiled by sliding windows."""
    lo, hi = physical_bounds(image)
    extent = hi - lo + np.array(image.GetSpacing()).max()
    needed = float(np.max(extent / (np.asarray(max_size) - 1)))
    if needed <= min_spacing:
        return model_grid_around((lo + hi) / 2, (min_spacing,) * 3, max_size)
    spacing = min(needed, min_spacing * max_factor)
    size = np.maximum(np.ceil(extent / spacing).astype(int) + 1, np.asarray(max_size))
    return model_grid_around((lo + hi) / 2, (spacing,) * 3, size)


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
