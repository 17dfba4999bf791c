"""Acquisition rendering for the benchmark: a label map acquired like a clinical 2D knee protocol.

Unlike the training generator (``generator.py``, random everything on the map's grid), a benchmark image is
planned like a real series: thick slices along a plane's normal (sagittal, coronal or axial, a few degrees
oblique), 0.4-0.6 mm in plane over a 150-160 mm field of view around the knee joint, a rectangular slice
profile, one of three named contrasts with fixed tissue intensities, a smooth bias field and Rician noise.
Every random choice comes from one seed, so a case is the same image on every run and machine.

The truth is the generation labels sampled at the acquisition voxel centres (model classes, 0 outside the
map), so a model is scored on the grid it was given, with its spacing. Changing anything here that changes
the rendered cases must bump ``benchmark.BENCHMARK_VERSION``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from . import tissues as T
from .dataset import LabelMap

# --- Acquisition protocols ------------------------------------------------------------------------------
# Image axes (ITK direction columns, LPS) of each plane before the small oblique tilt: (column axis, row axis);
# the slice axis is their cross product, along the plane's normal. As real series: a sagittal image has its
# columns along P and its rows along I (PIR, like the MESE sample), a coronal one L/I, an axial one L/P.
PLANE_AXES = {
    "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),  # normal -x (R): slices across the knee's width
    "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),  # normal +y (P)
    "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),  # normal +z (S)
}
PLANES = tuple(PLANE_AXES)
COVERAGE_MM = {"sagittal": 110.0, "coronal": 110.0, "axial": 130.0}  # slab extent planned along the normal
SLICES = (24, 40)  # slice count clipped to this range
INPLANE_MM = (0.4, 0.6)  # in-plane pixel spacing, uniform
FOV_MM = (150.0, 160.0)  # square in-plane field of view, uniform
THICKNESS_MM = (3.0, 4.0)  # slice thickness (rectangular slice profile), uniform
GAP_MM = (0.0, 1.0)  # slice spacing = thickness + gap (the MESE sample: 3 mm slices every 4 mm)
TILT_DEG = 8.0  # oblique planning: rotation up to this about each in-plane axis
CENTER_JITTER_MM = 5.0  # the field of view is centred within this of the knee joint centre, per axis
BIAS_STD = 0.25  # std of the log bias field at its control points...
BIAS_CONTROL_POINTS = (3, 4, 4)  # ...on a coarse (slice, row, column) grid, upsampled trilinearly
TEXTURE_STD = 0.03  # within-tissue intensity variation on the map grid (fraction of full scale)
SIGNAL_SCALE = 1000.0  # image values: intensities below x this

# --- Contrasts: fixed mean intensity of each generation label (0..1) and the noise level ----------------------
_BASE = {T.OUTSIDE: 0.0, T.AIR: 0.01, T.TENDON: 0.04, **{c: 0.03 for c in T.CORTICES}}


def _contrast(fat, marrow, muscle, fluid, cartilage, meniscus) -> np.ndarray:
    means = np.zeros(T.NUM_GEN_LABELS, np.float32)
    for label, value in _BASE.items():
        means[label] = value
    means[T.FAT], means[T.MUSCLE], means[T.FLUID], means[T.MENISCUS] = fat, muscle, fluid, meniscus
    means[list(T.MARROWS)] = marrow
    means[[T.FEMORAL_CARTILAGE, T.TIBIAL_CARTILAGE, T.PATELLAR_CARTILAGE]] = cartilage
    return means


CONTRASTS = {  # name -> (tissue means, Rician noise sigma as a fraction of full scale)
    "T1": (_contrast(fat=1.0, marrow=0.9, muscle=0.35, fluid=0.18, cartilage=0.45, meniscus=0.06), 0.03),
    "PD-FS": (_contrast(fat=0.10, marrow=0.14, muscle=0.30, fluid=0.95, cartilage=0.60, meniscus=0.05), 0.04),
    "T2": (_contrast(fat=0.62, marrow=0.52, muscle=0.20, fluid=1.0, cartilage=0.30, meniscus=0.05), 0.04),
}



# --- Rendering -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Acquisition:
    """The acquired grid of one case: ITK direction (columns = image axes), spacing and size (x, y, slice)."""

    plane: str
    direction: tuple[float, ...]  # 9 values, row-major
    spacing: tuple[float, float, float]
    size: tuple[int, int, int]
    center_lps: tuple[float, float, float]
    thickness_mm: float

    def reference(self, shift_mm: float = 0.0) -> sitk.Image:
        """An empty image on this grid, optionally shifted by ``shift_mm`` along the slice normal."""
        d = np.reshape(self.direction, (3, 3))
        half = d @ (np.asarray(self.spacing) * (np.asarray(self.size) - 1) / 2)
        origin = np.asarray(self.center_lps) - half + shift_mm * d[:, 2]
        ref = sitk.Image([int(s) for s in self.size], sitk.sitkUInt8)
        ref.SetSpacing([float(s) for s in self.spacing])
        ref.SetOrigin([float(o) for o in origin])
        ref.SetDirection([float(v) for v in self.direction])
        return ref


def _rotation(axis: np.ndarray, angle_deg: float) -> np.ndarray:
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    t = math.radians(angle_deg)
    return np.eye(3) + math.sin(t) * k + (1 - math.cos(t)) * k @ k


def plan_acquisition(labelmap: LabelMap, plane: str, rng: np.random.Generator) -> Acquisition:
    if plane not in PLANE_AXES:
        raise ValueError(f"plane must be one of {PLANES}, not {plane!r}")
    col, row = (np.array(v) for v in PLANE_AXES[plane])
    d = np.stack([col, row, np.cross(col, row)], axis=1)
    d = _rotation(d[:, 1], rng.uniform(-TILT_DEG, TILT_DEG)) @ _rotation(d[:, 0], rng.uniform(-TILT_DEG, TILT_DEG)) @ d
    inplane = rng.uniform(*INPLANE_MM)
    matrix = int(round(rng.uniform(*FOV_MM) / inplane))
    thickness = rng.uniform(*THICKNESS_MM)
    step = thickness + rng.uniform(*GAP_MM)
    slices = int(np.clip(round(COVERAGE_MM[plane] / step), *SLICES))
    center = labelmap.joint_center + rng.uniform(-CENTER_JITTER_MM, CENTER_JITTER_MM, 3)
    return Acquisition(plane, tuple(float(v) for v in d.ravel()), (inplane, inplane, step), (matrix, matrix, slices),
                       tuple(float(c) for c in center), thickness)


def map_image(labelmap: LabelMap, array: np.ndarray) -> sitk.Image:
    """``array`` (z, y, x, on the map's grid) as an image placed where the map lies in patient space."""
    img = sitk.GetImageFromArray(array)
    img.SetOrigin([float(o) for o in labelmap.origin])
    img.SetSpacing((float(labelmap.spacing),) * 3)
    return img


def _bias(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    coarse = torch.from_numpy(rng.standard_normal(BIAS_CONTROL_POINTS).astype(np.float32) * BIAS_STD)
    field = F.interpolate(coarse[None, None], size=shape, mode="trilinear", align_corners=True)[0, 0]
    return torch.exp(field).numpy()


def render_acquisition(labelmap: LabelMap, acq: Acquisition, contrast: str,
                       rng: np.random.Generator) -> tuple[sitk.Image, sitk.Image]:
    """(image float32, truth uint8) of ``labelmap`` acquired on ``acq`` in ``contrast``, noise from ``rng``."""
    means, noise_sigma = CONTRASTS[contrast]
    labels = labelmap.labels
    # Tissue intensities with a little texture on the map's grid (nothing outside the map), slightly smoothed
    # so the map's voxel staircase does not show at the finer in-plane resolution.
    painted = means[labels]
    texture = rng.standard_normal(labels.shape, dtype=np.float32)
    texture *= TEXTURE_STD
    texture[labels <= T.AIR] = 0.0
    painted += texture
    del texture
    fine = sitk.SmoothingRecursiveGaussian(map_image(labelmap, painted), 0.5 * labelmap.spacing)
    del painted
    # Rectangular slice profile: the mean of sub-slices across the thickness, each resampled linearly.
    n_sub = max(3, int(math.ceil(acq.thickness_mm / (0.5 * labelmap.spacing))))
    clean = None
    for k in range(n_sub):
        shift = acq.thickness_mm * ((k + 0.5) / n_sub - 0.5)
        sub = sitk.GetArrayFromImage(sitk.Resample(fine, acq.reference(shift), sitk.Transform(), sitk.sitkLinear,
                                                   0.0, sitk.sitkFloat32))
        clean = sub if clean is None else clean + sub
    clean /= n_sub
    clean *= _bias(clean.shape, rng)
    sigma = noise_sigma
    real = clean + rng.standard_normal(clean.shape, dtype=np.float32) * sigma
    imag = rng.standard_normal(clean.shape, dtype=np.float32) * sigma
    pixels = (np.sqrt(real * real + imag * imag) * SIGNAL_SCALE).astype(np.float32)
    ref = acq.reference()
    image = sitk.GetImageFromArray(pixels)
    image.CopyInformation(ref)
    gen = sitk.Resample(map_image(labelmap, labels), ref, sitk.Transform(), sitk.sitkNearestNeighbor,
                        T.OUTSIDE, sitk.sitkUInt8)
    truth = sitk.GetImageFromArray(T.TARGET_OF[sitk.GetArrayViewFromImage(gen)].astype(np.uint8))
    truth.CopyInformation(ref)
    return image, truth


def render_case(labelmap: LabelMap, plane: str, contrast: str, seed: int) -> tuple[sitk.Image, sitk.Image]:
    """One benchmark image and its truth (model classes at the acquisition voxel centres, 0 outside the map).
    Everything random (grid, tilt, centre, texture, bias, noise) comes from ``seed``."""
    if contrast not in CONTRASTS:
        raise ValueError(f"contrast must be one of {tuple(CONTRASTS)}, not {contrast!r}")
    rng = np.random.default_rng(seed)
    acq = plan_acquisition(labelmap, plane, rng)
    return render_acquisition(labelmap, acq, contrast, rng)
