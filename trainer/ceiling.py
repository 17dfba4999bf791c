"""``ceiling``: the benchmark Dice a model grid allows, whatever the network — measured, so that a choice of grid
or of training target is not a guess.

A model predicts on its own grid (``Preprocessing.spacing_mm``); the pipeline resamples its probabilities
linearly onto the acquisition grid, where the benchmark scores it. Even a perfect network is held back by that
grid. This gives every benchmark case perfect probabilities on the model grid and scores them exactly as the
benchmark scores a model (its cases, the pipeline's grid placement, resampling and clean-up, its metrics), in
two forms:

- ``centre``: one-hot of the class at each model voxel centre, the best a network trained on centre targets
  can do (``ranges.SOFT_TARGETS`` off): borders land halfway between voxels;
- ``fractions``: each class's share of the voxel (the map's class indicator smoothed by the voxel box's
  Gaussian equivalent, sigma = spacing / sqrt(12), sampled at the centres), the best a network trained on
  ``SOFT_TARGETS`` can do: borders land where they are inside the voxels.

Measured on the 33 cases of ``runs/dataset5`` (mean Dice Femur / Tibia / Fibula / Patella; the models of the
time scored 0.974 / 0.974 / 0.916 / 0.940): 1.3 mm centre 0.981 / 0.981 / 0.954 / 0.961, fractions 0.989 /
0.989 / 0.971 / 0.976; 1.0 mm centre 0.984 / 0.984 / 0.959 / 0.967. Fractions on the 1.3 mm grid allow more than
centres on a 1.0 mm grid, at half the network's cost.
"""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from KneeSegmentationLib.constants import NUM_CLASSES
from KneeSegmentationLib.files import write_text_atomically
from KneeSegmentationLib.models.plan import per_axis_spacing
from KneeSegmentationLib.segment.pipeline import labels_from_probabilities
from KneeSegmentationLib.segment.preprocess import whole_image_grid

from . import tissues as T
from .benchmark import ROLES, case_plan, score_case
from .dataset import LabelMap, load_dataset
from .render import map_image, render_case

FORMS = ("centre", "fractions")
NETWORK_DIVISOR = 8  # the grid is placed as for a network of four stages (three poolings), like every model's


def perfect_probabilities(m: LabelMap, grid: sitk.Image, form: str) -> np.ndarray:
    """(classes, z, y, x) float32 on ``grid``: the map's model classes, one-hot at the voxel centres or as
    fractions of each voxel; certain background beyond the map."""
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, not {form!r}")
    classes = T.TARGET_OF[m.labels]
    sigma = [s / np.sqrt(12.0) for s in grid.GetSpacing()]
    prob = []
    for c in range(NUM_CLASSES):
        indicator = map_image(m, (classes == c).astype(np.float32))
        if form == "fractions":
            indicator = sitk.SmoothingRecursiveGaussian(indicator, sigma)
        interpolator = sitk.sitkLinear if form == "fractions" else sitk.sitkNearestNeighbor
        outside = 1.0 if c == 0 else 0.0
        prob.append(sitk.GetArrayFromImage(sitk.Resample(indicator, grid, sitk.Transform(), interpolator, outside,
                                                         sitk.sitkFloat32)))
    return np.stack(prob)


def grid_ceiling(dataset: Path, spacing_mm: float | Sequence[float], form: str = "centre", cases: str = "all",
                 patch: Sequence[int] = (112, 112, 112), out: Path | None = None, log=print) -> dict:
    """Scores perfect probabilities on a ``spacing_mm`` grid on the benchmark's cases; returns (and prints)
    {bone: {"mean": ..., "worst": ...}}, and writes ``out`` (CSV, one row per case x bone) if given."""
    spacing = per_axis_spacing(spacing_mm)
    maps = {m.id: m for m in load_dataset(Path(dataset), ROLES)}
    rows = []
    for case in case_plan(list(maps.values()), cases):
        image, truth = render_case(maps[case.map_id], case.plane, case.contrast, case.seed)
        grid, _ = whole_image_grid(image, spacing, patch, NETWORK_DIVISOR)
        labels, _ = labels_from_probabilities(perfect_probabilities(maps[case.map_id], grid, form), grid, image)
        for r in score_case(labels, sitk.GetArrayFromImage(truth), image.GetSpacing()):
            rows.append({"case": case.id, "bone": r["bone"], "dice": r["dice"]})
    summary = {}
    for bone in dict.fromkeys(r["bone"] for r in rows):
        values = [r["dice"] for r in rows if r["bone"] == bone]
        summary[bone] = {"mean": round(statistics.mean(values), 4), "worst": round(min(values), 4)}
    log(f"ceiling of a {'x'.join(f'{s:g}' for s in spacing)} mm grid, {form}: "
        + ", ".join(f"{b} {s['mean']:.4f} (worst {s['worst']:.4f})" for b, s in summary.items()))
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(Path(out), "case,bone,dice\n" + "".join(
            f"{r['case']},{r['bone']},{r['dice']:.4f}\n" for r in rows))
    return summary
