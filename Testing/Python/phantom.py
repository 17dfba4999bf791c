"""An analytic knee phantom for tests: femur, tibia and fibula as cylinders defined in patient space (LPS mm),
so the same anatomy can be sampled on any grid (oblique, anisotropic, any orientation) and the true labels
are known exactly. Each bone has its own intensity, so a tiny network learns it in seconds."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

# Bone shapes relative to the joint centre (LPS: x to the patient's left, y posterior, z superior).
FEMUR_RADIUS, TIBIA_RADIUS, FIBULA_RADIUS = 24.0, 21.0, 7.0
JOINT_GAP = 3.0  # half the femorotibial gap, mm
FIBULA_OFFSET = (-28.0, 8.0)  # lateral (right knee: toward -x) and posterior, mm
FIBULA_TOP = -12.0
INTENSITY = {0: 100.0, 1: 400.0, 2: 260.0, 3: 180.0}


def make_grid(size, spacing, origin=(0.0, 0.0, 0.0), direction=None) -> sitk.Image:
    img = sitk.Image([int(s) for s in size], sitk.sitkFloat32)
    img.SetSpacing([float(s) for s in spacing])
    img.SetOrigin([float(o) for o in origin])
    if direction is not None:
        img.SetDirection([float(d) for d in np.asarray(direction).ravel()])
    return img


def centered_grid(size, spacing, center=(0.0, 0.0, 0.0), direction=None) -> sitk.Image:
    direction = np.eye(3) if direction is None else np.asarray(direction, float).reshape(3, 3)
    half = direction @ (np.asarray(spacing, float) * (np.asarray(size) - 1) / 2)
    return make_grid(size, spacing, np.asarray(center, float) - half, direction)


def _points(grid: sitk.Image) -> np.ndarray:
    """LPS coordinates of every voxel, shape (z, y, x, 3)."""
    size = grid.GetSize()
    k, j, i = np.meshgrid(*(np.arange(n) for n in size[::-1]), indexing="ij")
    idx = np.stack([i, j, k], -1).reshape(-1, 3).astype(float)
    d = np.array(grid.GetDirection()).reshape(3, 3)
    pts = np.asarray(grid.GetOrigin()) + (idx * np.asarray(grid.GetSpacing())) @ d.T
    return pts.reshape(*size[::-1], 3)


def phantom_labels(grid: sitk.Image, center=(0.0, 0.0, 0.0)) -> sitk.Image:
    p = _points(grid) - np.asarray(center, float)
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    labels = np.zeros(x.shape, np.uint8)
    labels[(x**2 + y**2 < FEMUR_RADIUS**2) & (z > JOINT_GAP)] = 1
    labels[(x**2 + y**2 < TIBIA_RADIUS**2) & (z < -JOINT_GAP)] = 2
    fx, fy = FIBULA_OFFSET
    labels[((x - fx) ** 2 + (y - fy) ** 2 < FIBULA_RADIUS**2) & (z < FIBULA_TOP)] = 3
    out = sitk.GetImageFromArray(labels)
    out.CopyInformation(grid)
    return out


def phantom_image(labels: sitk.Image, noise: float = 15.0, seed: int = 0, bias: float = 0.0) -> sitk.Image:
    """An MR-like image of ``labels``: per-bone intensity, optional smooth multiplicative bias, noise."""
    rng = np.random.default_rng(seed)
    lab = sitk.GetArrayFromImage(labels)
    img = np.vectorize(INTENSITY.get)(lab).astype(np.float32)
    if bias:
        zz = np.linspace(-1, 1, lab.shape[0])[:, None, None]
        yy = np.linspace(-1, 1, lab.shape[1])[None, :, None]
        img *= np.exp(bias * (zz + 0.5 * yy)).astype(np.float32)
    img += rng.normal(0, noise, img.shape).astype(np.float32)
    out = sitk.GetImageFromArray(img)
    out.CopyInformation(labels)
    return out


def phantom(size=(64, 64, 48), spacing=(2.0, 2.0, 2.5), center=(0.0, 0.0, 0.0), direction=None, seed=0):
    """(image, labels) of the phantom on a grid of ``size``/``spacing``/``direction`` centred on ``center``."""
    grid = centered_grid(size, spacing, center, direction)
    labels = phantom_labels(grid, center)
    return phantom_image(labels, seed=seed), labels


def four_bones(direction=None, size=(48, 44, 20), spacing=(1.2, 1.1, 3.0)):
    """(image, labels) of the phantom with a Patella block painted into a corner of its background: all four
    bone classes, for tests of segment names, colours and files (the phantom itself has three bones)."""
    from KneeSegmentationLib.constants import PATELLA

    image, labels = phantom(size=size, spacing=spacing, direction=direction)
    array = sitk.GetArrayFromImage(labels)
    block = array[2:6, 2:10, 2:10]
    block[block == 0] = PATELLA.label
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(labels)
    return image, out
