"""Resource limits, in one place: what the library refuses before it allocates memory for it.

A header is cheap to lie in: 281 bytes of NRRD can declare a volume of terabytes, a few MB of gzip can
inflate to gigabytes, a model card can ask for a 10 000³ patch or a 0.001 mm grid. Every size that decides an
allocation is checked against these limits first, from the header (``sitk.ImageFileReader.ReadImageInformation``
reads size, spacing and pixel type without the pixels) or from the card, and refused with a message that says
which number is too large and what to do.

Limits are generous for knee MRI: the real sample (384x384x160), 512³ inputs and a 400 mm field of view at
1 mm all pass.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .errors import InputError, ModelError

MAX_INPUT_VOXELS = 512 ** 3  # 134 M voxels: 0.5 GB as float32; the real sample has 24 M
MAX_INPUT_SIDE = 4096  # voxels along any one axis
MAX_MODEL_GRID_VOXELS = 320 ** 3  # 33 M: a 480 mm cube at 1.5 mm; the image resampled to the model's spacing (probabilities: 5 x 4 B each)
MIN_SPACING_MM = 1e-3  # below this a header is broken (a nearly singular direction gives 6e-10 mm)
MAX_SPACING_MM = 100.0
ORTHONORMAL_TOLERANCE = 1e-3  # |DᵀD − I| of a direction matrix; a skewed one misstates every volume
MODEL_SPACING_RANGE_MM = (0.1, 10.0)
MAX_PATCH_SIDE = 256
MAX_PATCH_VOXELS = 192 ** 3
MAX_FEATURES = 512  # channels of one U-Net level
MAX_LEVELS = 7


def _voxels(size: Sequence[int]) -> int:
    return int(np.prod([int(s) for s in size], dtype=object))


def check_input_size(size: Sequence[int], name: str = "The image") -> None:
    """Refuses an input whose declared size would not fit the limits (before its pixels are read)."""
    size = [int(s) for s in size]
    if any(s > MAX_INPUT_SIDE for s in size) or _voxels(size) > MAX_INPUT_VOXELS:
        raise InputError(f"{name} declares {'x'.join(map(str, size))} voxels ({_voxels(size) / 1e6:.0f} M); "
                         f"the limit is {MAX_INPUT_VOXELS / 1e6:.0f} M voxels and {MAX_INPUT_SIDE} per axis: "
                         "crop or downsample it first (or the header is broken)")


def check_spacing(spacing: Sequence[float], name: str = "The image") -> None:
    if not all(math.isfinite(s) and MIN_SPACING_MM <= s <= MAX_SPACING_MM for s in spacing):
        raise InputError(f"{name} has an impossible voxel spacing {tuple(float(f'{s:.6g}') for s in spacing)} mm "
                         f"(each must be between {MIN_SPACING_MM:g} and {MAX_SPACING_MM:g} mm); its header is broken.")


def check_direction(direction: Sequence[float], name: str = "The image") -> None:
    """Refuses a direction matrix that is not a rotation (or reflection): skewed axes misstate volumes and
    distances, a nearly singular matrix collapses the voxels."""
    d = np.asarray(direction, float)
    if d.size != 9 or not np.all(np.isfinite(d)):
        raise InputError(f"{name} has a degenerate direction matrix; its header is broken.")
    d = d.reshape(3, 3)
    error = float(np.abs(d.T @ d - np.eye(3)).max())
    if error > ORTHONORMAL_TOLERANCE:
        raise InputError(f"{name} has a direction matrix whose axes are not orthonormal (deviation {error:.3g}); "
                         "volumes and distances measured on it would be wrong. Its header is broken.")


def check_model_grid(size: Sequence[int], spacing: Sequence[float], what: str = "the image") -> None:
    """Refuses a model grid (``what`` resampled to the model's spacing) larger than the limit."""
    n = _voxels(size)
    if n > MAX_MODEL_GRID_VOXELS:
        extent = " x ".join(f"{s * sp:.0f}" for s, sp in zip(size, spacing))
        raise InputError(f"{what} spans {extent} mm, {'x'.join(map(str, size))} voxels at the model's spacing "
                         f"({n / 1e6:.0f} M, limit {MAX_MODEL_GRID_VOXELS / 1e6:.0f} M); give a smaller --roi "
                         "around the knee (or the header's spacing is broken)")


def check_model_card(spacing_mm: Sequence[float], patch_size: Sequence[int], features: Sequence[int],
                     where: str = "model card") -> None:
    """Refuses a card whose preprocessing or network would need absurd memory (or divide by zero)."""
    lo, hi = MODEL_SPACING_RANGE_MM
    if len(spacing_mm) != 3 or not all(math.isfinite(s) and lo <= s <= hi for s in spacing_mm):
        raise ModelError(f"{where}: input spacing {list(spacing_mm)} mm is out of range ({lo:g}–{hi:g} mm each)")
    if (len(patch_size) != 3 or not all(1 <= p <= MAX_PATCH_SIDE for p in patch_size)
            or _voxels(patch_size) > MAX_PATCH_VOXELS):
        raise ModelError(f"{where}: patch size {list(patch_size)} is out of range (1–{MAX_PATCH_SIDE} per axis, "
                         f"at most {round(MAX_PATCH_VOXELS ** (1 / 3))}³ voxels)")
    if not 1 <= len(features) <= MAX_LEVELS or not all(1 <= f <= MAX_FEATURES for f in features):
        raise ModelError(f"{where}: network features {list(features)} are out of range "
                         f"(1–{MAX_LEVELS} levels of 1–{MAX_FEATURES} channels)")
