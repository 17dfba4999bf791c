"""Segmentation quality measures, shared by the trainer's evaluation and the Slicer module (Dice).

Dice alone hides stray islands and boundary errors, so evaluation also reports the 95 % Hausdorff distance
and the mean (symmetric) surface distance in millimetres, the relative volume error, and the expected
calibration error of the predicted probabilities. Conventions, chosen so that aggregates stay finite:
- Dice of two empty masks is 1 (nothing to find, nothing found); of one empty mask 0.
- Surface distances with an empty mask on one side are ``inf``; with both empty, 0.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import SimpleITK as sitk

ECE_BINS = 10


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient 2|A∩B| / (|A| + |B|) of two boolean masks."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(a, b).sum()) / total


def dice_per_label(pred: np.ndarray, truth: np.ndarray, labels: Sequence[int]) -> dict[int, float]:
    return {int(k): dice(pred == k, truth == k) for k in labels}


def _surface(mask: np.ndarray) -> np.ndarray:
    """Boolean surface voxels: mask voxels with at least one 6-neighbour outside the mask (or the array)."""
    padded = np.pad(mask, 1)
    interior = padded[1:-1, 1:-1, 1:-1].copy()
    for axis in range(3):
        for shift in (-1, 1):
            interior &= np.roll(padded, shift, axis=axis)[1:-1, 1:-1, 1:-1]
    return mask & ~interior


def _distance_to(mask: np.ndarray, spacing_zyx: Sequence[float]) -> np.ndarray:
    """Euclidean distance (mm) of every voxel to the nearest surface voxel of ``mask``."""
    surface = sitk.GetImageFromArray(_surface(mask).astype(np.uint8))
    surface.SetSpacing([float(s) for s in spacing_zyx[::-1]])
    dist = sitk.SignedMaurerDistanceMap(surface, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)
    return np.abs(sitk.GetArrayFromImage(dist))


def directed_surface_distances(a: np.ndarray, b: np.ndarray,
                               spacing_zyx: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(distances (mm) from the surface voxels of ``a`` to the surface of ``b``, and from ``b``'s to ``a``'s)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return _distance_to(b, spacing_zyx)[_surface(a)], _distance_to(a, spacing_zyx)[_surface(b)]


def _surface_statistic(a: np.ndarray, b: np.ndarray, spacing_zyx: Sequence[float],
                       reduce: Callable[[np.ndarray, np.ndarray], float]) -> float:
    """``reduce`` of the two directed surface distances; 0 when both masks are empty, inf when one is."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if not a.any() and not b.any():
        return 0.0
    if not a.any() or not b.any():
        return float("inf")
    return float(reduce(*directed_surface_distances(a, b, spacing_zyx)))


def hd95(a: np.ndarray, b: np.ndarray, spacing_zyx: Sequence[float] = (1.0, 1.0, 1.0)) -> float:
    """95 % Hausdorff distance (mm) as the field reports it (MONAI, DeepMind's surface-distance,
    MetricsReloaded): the larger of the two directed 95th percentiles, not one percentile of both pooled,
    which a small stray region on one side would barely move."""
    return _surface_statistic(a, b, spacing_zyx, lambda ab, ba: max(np.percentile(ab, 95), np.percentile(ba, 95)))


def mean_surface_distance(a: np.ndarray, b: np.ndarray, spacing_zyx: Sequence[float] = (1.0, 1.0, 1.0)) -> float:
    """Mean of the symmetric surface distances (mm): both directions' distances together."""
    return _surface_statistic(a, b, spacing_zyx, lambda ab, ba: np.mean(np.concatenate([ab, ba])))


def volume_error(pred: np.ndarray, truth: np.ndarray) -> float:
    """Relative volume error (|pred| - |truth|) / |truth|; 0 if both are empty, inf if only truth is."""
    p, t = int(np.asarray(pred, bool).sum()), int(np.asarray(truth, bool).sum())
    if t == 0:
        return 0.0 if p == 0 else float("inf")
    return (p - t) / t


def bone_metrics(pred: np.ndarray, truth: np.ndarray, spacing_zyx: Sequence[float], label: int,
                 surface: bool = True) -> dict[str, float]:
    """One bone (``label``) of a predicted label map against the truth: Dice, and with ``surface`` the
    HD95 and mean surface distance (mm) and the relative volume error, keyed as the evaluation reports list them."""
    p, t = pred == label, truth == label
    out = {"dice": dice(p, t)}
    if surface:
        out.update(hd95_mm=hd95(p, t, spacing_zyx), msd_mm=mean_surface_distance(p, t, spacing_zyx),
                   volume_error=volume_error(p, t))
    return out


def expected_calibration_error(prob: np.ndarray, truth: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE of the top-class confidence: sum over confidence bins of |accuracy - confidence| x bin share.

    ``prob`` is (C, ...) class probabilities, ``truth`` (...) integer labels."""
    prob = np.asarray(prob, np.float64).reshape(prob.shape[0], -1)
    truth = np.asarray(truth).reshape(-1)
    conf = prob.max(axis=0)
    correct = prob.argmax(axis=0) == truth
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for k in range(bins):
        sel = which == k
        if sel.any():
            ece += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return float(ece)
