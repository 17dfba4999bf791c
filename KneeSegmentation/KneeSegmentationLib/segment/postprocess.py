"""From class probabilities on the model grid to a clean labelmap in the input image's geometry.

Probabilities (not labels) are resampled to the input grid, so boundaries are interpolated below the model's
voxel size; the argmax there guarantees that no voxel belongs to two bones. Then each bone keeps its
plausible connected component(s) and has its holes filled: the network's rare mistakes are small islands
(a patella voxel called femur, a vessel called fibula), which Dice hides but a user must erase by hand.

The fibula is judged on its own evidence, never on its distance to a tibia that may itself be wrong: a
component is kept if it is large enough to be bone (``FIBULA_MIN_ML``: the fibular head cut by the field of
view is still ~1 ml), lies no higher than the top of the tibia (the fibular head sits below the joint line) and
not in front of the tibia (it is lateral and posterior), the place checks only where a tibia was found.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..constants import BONES, FIBULA, TIBIA

# A component is kept if it has at least this fraction of the bone's largest component: a bone split by the
# field of view keeps both parts, a speck does not. Components are face-connected, as Slicer's Islands effect
# counts them: a few voxels touching the bone only at an edge or a corner (thick slices, resampled boundaries)
# would be islands a user has to remove by hand.
MIN_COMPONENT_FRACTION = 0.25
# Evidence for a fibula component: volume, height (not above the tibia's top by more than this) and
# antero-posterior place (its centre not more than this in front of the tibia's centre).
FIBULA_MIN_ML = 0.3
FIBULA_ABOVE_TIBIA_MM = 10.0
FIBULA_ANTERIOR_MM = 10.0


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


def probabilities_on(prob: np.ndarray, grid: sitk.Image, target: sitk.Image):
    """``prob`` (C, z, y, x) on ``grid`` resampled to ``target``'s grid, where they overlap: (sub, box) as
    ``resample_channels`` returns them, certain background beyond the model grid."""
    background = np.zeros(prob.shape[0], np.float32)
    background[0] = 1.0
    return resample_channels(prob, grid, target, background)


def probabilities_to_labels(prob: np.ndarray, grid: sitk.Image, target: sitk.Image) -> np.ndarray:
    """Argmax labelmap (z, y, x, uint8) in ``target``'s geometry from probabilities on ``grid``."""
    labels = np.zeros(target.GetSize()[::-1], np.uint8)
    sub, box = probabilities_on(prob, grid, target)
    if sub is None:
        return labels
    lo, hi = box
    labels[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]] = np.argmax(sub, axis=0).astype(np.uint8)
    return labels


def clean_labels(labels: np.ndarray, spacing: tuple[float, float, float],
                 direction: tuple[float, ...] | None = None) -> np.ndarray:
    """Per bone: keep components with at least ``MIN_COMPONENT_FRACTION`` of the largest, fill holes; fibula
    components must also pass ``_fibula_evidence``. ``spacing`` (x, y, z) and ``direction`` (ITK's 9 numbers,
    identity if None) place voxels in patient space. Works on the bounding box of the labelled voxels only,
    so it stays fast on large images."""
    present = np.argwhere(labels > 0)
    out = np.zeros_like(labels)
    if present.size == 0:
        return out
    lo, hi = present.min(axis=0), present.max(axis=0) + 1
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    crop = labels[box]
    cleaned = np.zeros_like(crop)
    to_lps = _index_to_lps(spacing, direction)
    for bone in BONES:
        mask = crop == bone.label
        kept = _plausible_components(mask, spacing)
        if kept is not None and bone is FIBULA:
            kept = _fibula_evidence(kept, cleaned == TIBIA.label, spacing, to_lps)
        if kept is None:
            continue
        filled = sitk.GetArrayFromImage(sitk.BinaryFillhole(sitk.GetImageFromArray(kept.astype(np.uint8)), True)) > 0
        # A filled hole may only take voxels no other bone has claimed.
        cleaned[filled & ((crop == 0) | mask) & (cleaned == 0)] = bone.label
    out[box] = cleaned
    return out


def _index_to_lps(spacing, direction) -> np.ndarray:
    """3x3 matrix taking (z, y, x) index offsets to LPS millimetres."""
    d = np.eye(3) if direction is None else np.asarray(direction, float).reshape(3, 3)
    return (d * np.asarray(spacing, float)[None, :])[:, ::-1]


def _fibula_evidence(kept: np.ndarray, tibia: np.ndarray, spacing, to_lps: np.ndarray) -> np.ndarray | None:
    """The fibula components that are big enough and, where a tibia was found, not above its top nor in
    front of it (see the module docstring)."""
    cc = sitk.GetArrayFromImage(sitk.ConnectedComponent(_image(kept, spacing), True))
    voxel_ml = float(np.prod(spacing)) / 1000
    tib = np.argwhere(tibia) @ to_lps.T if tibia.any() else None
    keep = np.zeros(kept.shape, bool)
    for label in np.unique(cc[cc > 0]):
        component = cc == label
        if component.sum() * voxel_ml < FIBULA_MIN_ML:
            continue
        if tib is not None:
            centre = np.argwhere(component).mean(axis=0) @ to_lps.T
            if centre[2] > tib[:, 2].max() + FIBULA_ABOVE_TIBIA_MM:  # LPS +z: superior
                continue
            if centre[1] < tib[:, 1].mean() - FIBULA_ANTERIOR_MM:  # LPS +y: posterior
                continue
        keep |= component
    return keep if keep.any() else None


def _image(mask: np.ndarray, spacing) -> sitk.Image:
    img = sitk.GetImageFromArray(mask.astype(np.uint8))
    img.SetSpacing([float(s) for s in spacing])
    return img


def _plausible_components(mask: np.ndarray, spacing) -> np.ndarray | None:
    """The components of ``mask`` worth keeping; None if none is."""
    if not mask.any():
        return None
    cc = sitk.GetArrayFromImage(sitk.ConnectedComponent(_image(mask, spacing), False))  # face-connected
    labels = np.unique(cc[cc > 0])
    sizes = np.bincount(cc.ravel())[labels]
    keep = labels[sizes >= MIN_COMPONENT_FRACTION * sizes.max()]
    return np.isin(cc, keep)
