"""From class probabilities on the model grid to a clean labelmap in the input image's geometry.

Probabilities (not labels) are resampled to the input grid, so boundaries are interpolated below the model's
voxel size; the argmax there guarantees that no voxel belongs to two bones. Then each bone keeps its
plausible connected component(s) and has its holes filled: the network's rare mistakes are small islands
(a patella voxel called femur, a vessel called fibula), which Dice hides but a user must erase by hand.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from .constants import BONES, FIBULA, TIBIA

# A component is kept if it has at least this fraction of the bone's largest component: a bone split by the
# field of view keeps both parts, a speck does not.
MIN_COMPONENT_FRACTION = 0.25
# The fibular head lies against the lateral tibial condyle (proximal tibiofibular joint).
FIBULA_MAX_GAP_MM = 8.0


def _array_to_image(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    img = sitk.GetImageFromArray(array)
    img.CopyInformation(reference)
    return img


def grid_bbox_in(target: sitk.Image, grid: sitk.Image) -> tuple[np.ndarray, np.ndarray] | None:
    """Index range [lo, hi) (x, y, z order) of ``target`` voxels covered by ``grid``; None if disjoint."""
    size = np.array(grid.GetSize())
    corners = [[i, j, k] for i in (0, size[0] - 1) for j in (0, size[1] - 1) for k in (0, size[2] - 1)]
    pts = [grid.TransformContinuousIndexToPhysicalPoint([float(c) for c in corner]) for corner in corners]
    idx = np.array([target.TransformPhysicalPointToContinuousIndex(p) for p in pts])
    lo = np.maximum(np.floor(idx.min(axis=0)).astype(int) - 1, 0)
    hi = np.minimum(np.ceil(idx.max(axis=0)).astype(int) + 2, np.array(target.GetSize()))
    if np.any(hi <= lo):
        return None
    return lo, hi


def resample_channels(channels: np.ndarray, grid: sitk.Image, target: sitk.Image, background: np.ndarray) -> tuple:
    """Resamples each channel (C, z, y, x) on ``grid`` linearly onto the part of ``target`` that ``grid``
    covers. Returns (array (C, z', y', x'), (lo, hi)) or (None, None) if the grids do not overlap.
    ``background[c]`` fills voxels outside ``grid``."""
    box = grid_bbox_in(target, grid)
    if box is None:
        return None, None
    lo, hi = box
    sub = sitk.Image([int(n) for n in hi - lo], sitk.sitkUInt8)
    sub.SetDirection(target.GetDirection())
    sub.SetSpacing(target.GetSpacing())
    sub.SetOrigin(target.TransformIndexToPhysicalPoint([int(i) for i in lo]))
    out = np.empty((channels.shape[0], *(hi - lo)[::-1]), np.float32)
    for c in range(channels.shape[0]):
        img = _array_to_image(np.ascontiguousarray(channels[c], dtype=np.float32), grid)
        res = sitk.Resample(img, sub, sitk.Transform(), sitk.sitkLinear, float(background[c]), sitk.sitkFloat32)
        out[c] = sitk.GetArrayViewFromImage(res)
    return out, (lo, hi)


def probabilities_to_labels(prob: np.ndarray, grid: sitk.Image, target: sitk.Image) -> np.ndarray:
    """Argmax labelmap (z, y, x, uint8) in ``target``'s geometry from probabilities on ``grid``."""
    labels = np.zeros(target.GetSize()[::-1], np.uint8)
    background = np.zeros(prob.shape[0], np.float32)
    background[0] = 1.0
    sub, box = resample_channels(prob, grid, target, background)
    if sub is None:
        return labels
    lo, hi = box
    labels[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]] = np.argmax(sub, axis=0).astype(np.uint8)
    return labels


def clean_labels(labels: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:  # spacing in x, y, z
    """Per bone: keep components with at least ``MIN_COMPONENT_FRACTION`` of the largest, fill holes; a
    fibula component must also lie within ``FIBULA_MAX_GAP_MM`` of the tibia (the fibular head sits against
    the lateral tibial condyle; a "fibula" elsewhere is a vessel or tendon). Works on the bounding box of
    the labelled voxels only, so it stays fast on large images."""
    present = np.argwhere(labels > 0)
    out = np.zeros_like(labels)
    if present.size == 0:
        return out
    lo, hi = present.min(axis=0), present.max(axis=0) + 1
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    crop = labels[box]
    cleaned = np.zeros_like(crop)
    for bone in BONES:
        mask = crop == bone.label
        allowed = _near(cleaned == TIBIA.label, spacing, FIBULA_MAX_GAP_MM) if bone is FIBULA else None
        kept = _plausible_components(mask, spacing, allowed)
        if kept is None:
            continue
        filled = sitk.GetArrayFromImage(sitk.BinaryFillhole(sitk.GetImageFromArray(kept.astype(np.uint8)), True)) > 0
        # A filled hole may only take voxels no other bone has claimed.
        cleaned[filled & ((crop == 0) | mask) & (cleaned == 0)] = bone.label
    out[box] = cleaned
    return out


def _image(mask: np.ndarray, spacing) -> sitk.Image:
    img = sitk.GetImageFromArray(mask.astype(np.uint8))
    img.SetSpacing([float(s) for s in spacing])
    return img


def _near(mask: np.ndarray, spacing, distance_mm: float) -> np.ndarray:
    """Voxels within ``distance_mm`` of ``mask`` (none if ``mask`` is empty)."""
    if not mask.any():
        return np.zeros(mask.shape, bool)
    dist = sitk.SignedMaurerDistanceMap(_image(mask, spacing), insideIsPositive=False, squaredDistance=False,
                                       useImageSpacing=True)
    return sitk.GetArrayFromImage(dist) <= distance_mm


def _plausible_components(mask: np.ndarray, spacing, allowed: np.ndarray | None) -> np.ndarray | None:
    """The components of ``mask`` worth keeping (touching ``allowed`` where given); None if none is."""
    if not mask.any():
        return None
    cc_image = sitk.ConnectedComponent(_image(mask, spacing), True)
    cc = sitk.GetArrayFromImage(cc_image)
    labels = np.unique(cc[cc > 0])
    if allowed is not None:
        labels = np.unique(cc[(cc > 0) & allowed])
    if labels.size == 0:
        return None
    sizes = np.bincount(cc.ravel())[labels]
    keep = labels[sizes >= MIN_COMPONENT_FRACTION * sizes.max()]
    return np.isin(cc, keep)
