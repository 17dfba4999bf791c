"""Draws the module icon and the sample-data thumbnail into Resources/Icons with matplotlib.

    python scripts/make_icons.py

KneeSegmentation.png (128 x 128): a knee-bones glyph in the segment colours of ``constants``: femur with its
two condyles above, tibia with its plateau below, fibula beside it. KneeMESE.png (260 x 280, the size Slicer's
Sample Data module expects): the middle sagittal slice of the bundled sample, windowed to its 1st-99th
percentiles. Both are written atomically (temporary file, then rename).
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
from matplotlib.patches import Ellipse, FancyBboxPatch, Rectangle  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "KneeSegmentation"))

from KneeSegmentationLib.constants import FEMUR, FIBULA, TIBIA  # noqa: E402
from KneeSegmentationLib.segment.io import read_image  # noqa: E402
from KneeSegmentationLib.resources import SAMPLE_THUMBNAIL, icon_file, knee_sample  # noqa: E402

ICON_PX = 128
THUMBNAIL_PX = (260, 280)  # width, height
OUTLINE = "#3b3b3b"


def _save(fig, path: Path, dpi: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=path.parent, prefix=".tmp-")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=dpi, transparent=path.name == icon_file().name)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; resources are read by everyone
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)


def draw_icon(path: Path) -> None:
    """Front view of a right knee: shafts as rounded bars, condyles as ellipses, in a 100 x 100 box."""
    fig = plt.figure(figsize=(1, 1))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.set_aspect("equal")
    ax.axis("off")
    style = dict(edgecolor=OUTLINE, linewidth=1.6)
    # Femur: shaft and two condyles.
    ax.add_patch(FancyBboxPatch((38, 62), 24, 36, boxstyle="round,pad=0,rounding_size=6", facecolor=FEMUR.color, **style))
    for x in (36, 64):
        ax.add_patch(Ellipse((x, 58), 30, 22, facecolor=FEMUR.color, **style))
    ax.add_patch(Rectangle((39, 56), 22, 14, facecolor=FEMUR.color, edgecolor="none"))
    # Tibia: plateau and shaft.
    ax.add_patch(FancyBboxPatch((22, 36), 56, 10, boxstyle="round,pad=0,rounding_size=4", facecolor=TIBIA.color, **style))
    ax.add_patch(FancyBboxPatch((37, 2), 26, 38, boxstyle="round,pad=0,rounding_size=5", facecolor=TIBIA.color, **style))
    ax.add_patch(Rectangle((38, 34), 24, 8, facecolor=TIBIA.color, edgecolor="none"))
    # Fibula: thin bone on the lateral side, its head just below the plateau.
    ax.add_patch(FancyBboxPatch((71, 2), 8, 28, boxstyle="round,pad=0,rounding_size=3", facecolor=FIBULA.color, **style))
    ax.add_patch(Ellipse((75, 30), 13, 9, facecolor=FIBULA.color, **style))
    _save(fig, path, dpi=ICON_PX)


def draw_thumbnail(path: Path) -> None:
    image = read_image(knee_sample().path)
    array = sitk.GetArrayFromImage(image)  # (slices, rows, columns)
    middle = array[array.shape[0] // 2]
    lo, hi = np.percentile(array, (1, 99))
    width, height = THUMBNAIL_PX
    fig = plt.figure(figsize=(width / 100, height / 100))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(np.clip((middle - lo) / (hi - lo), 0, 1), cmap="gray", aspect="auto", interpolation="lanczos")
    ax.axis("off")
    _save(fig, path, dpi=100)


def main() -> None:
    draw_icon(icon_file())
    draw_thumbnail(icon_file().parent / SAMPLE_THUMBNAIL)
    print(icon_file(), icon_file().parent / SAMPLE_THUMBNAIL)


if __name__ == "__main__":
    main()
