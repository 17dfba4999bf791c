"""PNG previews: segments over the image, so a user (or a reviewer of a model) sees a result at a glance.

Top row: sagittal, coronal and axial planes through the knee joint on a 1 mm grid aligned with the patient
axes (anisotropic acquisitions look right). Bottom row: three acquired slices around the joint, as scanned.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from ..constants import BONES
from ..errors import InputError
from ..files import write_atomically
from ..segment.preprocess import model_grid_around, resample_to_grid

PREVIEW_SPACING_MM = 1.0
PREVIEW_FOV_MM = 160.0
OVERLAY_ALPHA = 0.45


def _overlay(ax, image: np.ndarray, labels: np.ndarray, title: str, aspect: float = 1.0) -> None:
    lo, hi = np.percentile(image, [1, 99.5]) if image.any() else (0, 1)
    ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, origin="lower", aspect=aspect, interpolation="nearest")
    rgba = np.zeros((*labels.shape, 4), np.float32)
    for bone in BONES:
        rgba[labels == bone.label] = (*bone.color, OVERLAY_ALPHA)
    ax.imshow(rgba, origin="lower", aspect=aspect, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def write_preview(image: sitk.Image, labelmap: sitk.Image, center_lps: Sequence[float], path: str | Path,
                  title: str = "") -> Path:
    """Writes the preview PNG to ``path`` and returns it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    n = int(PREVIEW_FOV_MM / PREVIEW_SPACING_MM)
    grid = model_grid_around(center_lps, (PREVIEW_SPACING_MM,) * 3, (n, n, n))
    img = sitk.GetArrayFromImage(resample_to_grid(image, grid, sitk.sitkLinear, 0.0, sitk.sitkFloat32))
    lab = sitk.GetArrayFromImage(resample_to_grid(labelmap, grid, sitk.sitkNearestNeighbor, 0))
    c = n // 2
    fig, axes = plt.subplots(2, 3, figsize=(12, 8.4))
    # LPS arrays are (z=S, y=P, x=L). Radiological display: sagittal = (S vs A), coronal = (S vs R), axial.
    _overlay(axes[0, 0], img[:, :, c][:, ::-1], lab[:, :, c][:, ::-1], "sagittal (through joint)")
    _overlay(axes[0, 1], img[:, c, :], lab[:, c, :], "coronal (through joint)")
    _overlay(axes[0, 2], img[c, ::-1, :], lab[c, ::-1, :], "axial (through joint)")
    native = sitk.GetArrayFromImage(image)
    native_lab = sitk.GetArrayFromImage(labelmap)
    k_center = int(round(image.TransformPhysicalPointToContinuousIndex([float(v) for v in center_lps])[2]))
    k_center = int(np.clip(k_center, 0, native.shape[0] - 1))
    sx, sy = image.GetSpacing()[:2]
    for col, dk in enumerate((-3, 0, 3)):
        k = int(np.clip(k_center + dk, 0, native.shape[0] - 1))
        _overlay(axes[1, col], native[k][::-1], native_lab[k][::-1], f"acquired slice {k}", aspect=sy / sx)
    fig.legend(handles=[Patch(color=b.color, label=b.name) for b in BONES], loc="lower center", ncol=len(BONES))
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    path = Path(path)
    if not path.name.lower().endswith(".png"):
        plt.close(fig)
        raise InputError(f"{path.name}: a preview is a PNG; its name must end with .png")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:  # temp file + rename, like every other output: a reader never sees half a PNG
        write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=80, format="png"), suffix=".png")
    finally:
        plt.close(fig)
    return path
