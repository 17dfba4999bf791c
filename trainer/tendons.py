"""Tendons at the patella's poles: background structures the model must learn to leave out of the Patella.

Neither the mskt maps nor the LLP26 shape model label the quadriceps or the patellar tendon, so without them
the tissue just above and below the patella is drawn as fluid, fat or muscle. In real MRI both tendons are dark
bands continuing the patella's dark cortex, and a model that never saw one grows the Patella up the quadriceps
tendon and down the patellar tendon (the real sample's patella came out about twice its size). ``prepare``
therefore paints both tendons as their own generation label (``tissues.TENDON``, background class) onto the
unlabelled soft tissue: a flattened cylinder leaving each pole along the leg axis, its size drawn per map.

The leg axis and the anterior direction come from the anatomy itself (femur above tibia, patella in front of
the joint), so no orientation of the source map is assumed.
"""
from __future__ import annotations

import numpy as np

from . import ranges as R
from . import tissues as T

POLE_FRACTION = 0.12  # the pole: the patella voxels within this fraction of its extent along the leg axis


def _frame(femur: np.ndarray, tibia: np.ndarray, patella: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit vectors (superior, anterior, lateral) in voxel-index space scaled to mm, from bone centroids."""
    superior = femur.mean(0) - tibia.mean(0)
    superior /= np.linalg.norm(superior)
    joint = (femur.mean(0) + tibia.mean(0)) / 2
    anterior = patella.mean(0) - joint
    anterior -= anterior.dot(superior) * superior
    anterior /= max(float(np.linalg.norm(anterior)), 1e-6)
    return superior, anterior, np.cross(superior, anterior)


def _band(points: np.ndarray, start: np.ndarray, along: np.ndarray, anterior: np.ndarray, lateral: np.ndarray,
          length: float, thickness: float, width: float, tilt: float) -> np.ndarray:
    """Which ``points`` (mm) lie in a flattened cylinder leaving ``start`` along ``along`` for ``length`` mm,
    ``thickness`` mm front to back and ``width`` mm side to side, its axis tilted forward by ``tilt`` (rad)."""
    rel = points - start
    t = rel @ along
    a = rel @ anterior - t * np.tan(tilt)
    w = rel @ lateral
    inside = (a / (thickness / 2)) ** 2 + (w / (width / 2)) ** 2 <= 1.0
    return inside & (t >= -R.TENDON_OVERLAP_MM) & (t <= length)


def add_tendons(gen: np.ndarray, femur: np.ndarray, tibia: np.ndarray, patella: np.ndarray, spacing: float,
                rng: np.random.Generator) -> np.ndarray:
    """Paint the quadriceps and patellar tendons (``T.TENDON``) onto soft-tissue voxels of ``gen`` (returned
    changed, in place). ``femur``, ``tibia``, ``patella``: boolean masks on ``gen``'s grid; nothing is painted
    unless all three bones are present."""
    if not (femur.any() and tibia.any() and patella.any()):
        return gen
    pts = {name: np.argwhere(mask) * spacing for name, mask in
           (("femur", femur), ("tibia", tibia), ("patella", patella))}
    superior, anterior, lateral = _frame(pts["femur"], pts["tibia"], pts["patella"])
    height = pts["patella"] @ superior
    lo, hi = height.min(), height.max()
    pole = POLE_FRACTION * (hi - lo)
    reach = int(np.ceil(R.TENDON_REACH_MM / spacing))  # search only this close to the patella
    lo_idx = np.maximum(pts["patella"].min(0) / spacing - reach, 0).astype(int)
    hi_idx = (pts["patella"].max(0) / spacing + reach + 1).astype(int)
    box = tuple(slice(a, b) for a, b in zip(lo_idx, hi_idx))
    soft = np.isin(gen[box], (T.FLUID, T.FAT, T.MUSCLE))
    candidates = np.argwhere(soft) + lo_idx
    points = candidates * spacing
    painted = np.zeros(len(candidates), bool)
    for sign, ranges in ((1.0, R.QUADRICEPS_TENDON), (-1.0, R.PATELLAR_TENDON)):
        cap = pts["patella"][(height >= hi - pole) if sign > 0 else (height <= lo + pole)]
        start = cap.mean(0) + anterior * rng.uniform(*R.TENDON_ANTERIOR_SHIFT_MM)
        length, thickness, width = (rng.uniform(*ranges[key]) for key in ("length", "thickness", "width"))
        tilt = np.deg2rad(rng.uniform(-R.TENDON_TILT_DEG, R.TENDON_TILT_DEG))
        painted |= _band(points, start, sign * superior, anterior, lateral, length, thickness, width, tilt)
    hit = candidates[painted]
    gen[tuple(hit.T)] = T.TENDON
    return gen
