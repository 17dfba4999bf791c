"""The fixed benchmark (trainer/benchmark.py, trainer/render.py): rendering on acquisition grids, case plan,
scoring, outputs."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import SimpleITK as sitk

from KneeSegmentationLib.segment.preprocess import whole_image_grid

from trainer import benchmark as B
from trainer import render as R
from trainer import tissues as T
from trainer.dataset import load_dataset
from trainer_data import make_tiny_dataset


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("benchmark"))


@pytest.fixture(scope="module")
def held_out(tiny_dataset):
    return load_dataset(tiny_dataset, B.ROLES)


def _femur_ml_inside(m, image: sitk.Image) -> float:
    """Femur volume of the map (its own voxels) whose centres lie inside the acquired box."""
    idx = np.argwhere(T.TARGET_OF[m.labels] == 1)[:, ::-1]  # (x, y, z) indices
    pts = m.origin + idx * m.spacing
    d = np.reshape(image.GetDirection(), (3, 3))
    cont = (pts - np.asarray(image.GetOrigin())) @ d / np.asarray(image.GetSpacing())
    inside = np.all((cont >= -0.5) & (cont <= np.asarray(image.GetSize()) - 0.5), axis=1)
    return float(inside.sum()) * m.spacing**3 / 1000


@pytest.mark.parametrize("plane", R.PLANES)
def test_render_case_geometry_and_truth(held_out, plane):
    m = held_out[0]
    case = B.case_for(m, plane)
    image, truth = R.render_case(m, plane, case.contrast, case.seed)
    assert image.GetPixelID() == sitk.sitkFloat32 and truth.GetPixelID() == sitk.sitkUInt8
    assert truth.GetSize() == image.GetSize() and truth.GetDirection() == image.GetDirection()
    d = np.reshape(image.GetDirection(), (3, 3))
    np.testing.assert_allclose(d.T @ d, np.eye(3), atol=1e-9)
    normal = {"sagittal": 0, "coronal": 1, "axial": 2}[plane]
    assert abs(d[normal, 2]) > 0.95  # slices stacked along the plane's normal (a few degrees oblique)
    sx, sy, sz = image.GetSpacing()
    nx, ny, nz = image.GetSize()
    assert sx == sy and R.INPLANE_MM[0] <= sx <= R.INPLANE_MM[1]
    assert R.FOV_MM[0] - 1 <= nx * sx <= R.FOV_MM[1] + 1 and nx == ny
    assert R.THICKNESS_MM[0] <= sz <= R.THICKNESS_MM[1] + R.GAP_MM[1] and R.SLICES[0] <= nz <= R.SLICES[1]
    a = sitk.GetArrayFromImage(image)
    assert np.all(np.isfinite(a)) and a.std() > 0
    t = sitk.GetArrayFromImage(truth)
    assert set(np.unique(t)) <= {0, 1, 2, 3, 4} and (t == 2).any()
    truth_ml = float((t == 1).sum()) * sx * sy * sz / 1000
    expected = _femur_ml_inside(m, image)
    assert expected > 10
    assert truth_ml == pytest.approx(expected, rel=0.05)
    # the bones are painted with the contrast's marrow intensity: brighter/darker than air as planned
    marrow = a[t == 1].mean()
    air = a[t == 0].min()
    assert marrow > air


def test_case_plan_is_deterministic(held_out):
    plan = B.case_plan(held_out, "all")
    assert plan == B.case_plan(held_out, "all")
    assert len(plan) == len(held_out) * len(R.PLANES) and len({c.seed for c in plan}) == len(plan)
    quick = B.case_plan(held_out, "quick")
    assert len(quick) == 3 and {c.plane for c in quick} == set(B.PLANES) and {c.contrast for c in quick} == set(B.CONTRASTS)
    assert {c.contrast for c in plan} == set(R.CONTRASTS)  # one map: the contrasts rotate over its planes
    c = plan[0]
    first = sitk.GetArrayFromImage(R.render_case(held_out[0], c.plane, c.contrast, c.seed)[0]).tobytes()
    again = sitk.GetArrayFromImage(R.render_case(held_out[0], c.plane, c.contrast, c.seed)[0]).tobytes()
    assert first == again
    with pytest.raises(ValueError):
        B.case_plan(held_out, "some")


def test_missed_bone_scores_zero_and_nan():
    truth = np.zeros((8, 16, 16), np.uint8)
    truth[2:6, 4:12, 4:12] = 1
    truth[2:6, 12:16, 4:12] = 2
    pred = np.where(truth == 1, 1, 0).astype(np.uint8)
    rows = {r["bone"]: r for r in B.score_case(pred, truth, (1.0, 1.0, 4.0))}
    assert rows["Femur"]["dice"] == 1.0 and rows["Femur"]["hd95_mm"] == 0.0
    assert rows["Tibia"]["dice"] == 0.0 and math.isnan(rows["Tibia"]["hd95_mm"]) and not rows["Tibia"]["found"]
    assert B.summarize([{**r, "role": "val", "plane": "axial", "contrast": "T1"} for r in rows.values()]
                       )["bones"]["Tibia"]["missed"] == 1


def _summary(femur, tibia, plan=({"case": "a/axial", "seed": 1, "contrast": "T1"},)):
    return {"benchmark": B.BENCHMARK_VERSION, "cases": "all", "plan": list(plan),
            "bones": {"Femur": {"dice_mean": femur}, "Tibia": {"dice_mean": tibia}}}


def test_compare():
    assert B.compare(_summary(0.8, 0.7), _summary(0.85, 0.75))
    assert not B.compare(_summary(0.8, 0.7), _summary(0.85, 0.70))  # a tie is no win
    assert not B.compare(_summary(0.8, 0.7), _summary(0.9, 0.6))
    with pytest.raises(ValueError):
        B.compare(_summary(0.8, 0.7), _summary(0.9, 0.8, plan=({"case": "b/axial", "seed": 2, "contrast": "T1"},)))
    with pytest.raises(ValueError, match="mirrored"):  # a summary without "tta" ran without the mirrored pass
        B.compare(_summary(0.8, 0.7), {**_summary(0.9, 0.8), "tta": True})
    assert B.compare({**_summary(0.8, 0.7), "tta": False}, _summary(0.9, 0.8))


def test_quick_benchmark_with_tiny_model(tiny_dataset, tiny_model, tmp_path):
    out = tmp_path / "bench"
    lines = []
    summary = B.run_benchmark(tiny_model, out, tiny_dataset, cases="quick", echoes=False, log=lines.append)
    with open(out / "benchmark.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == B.CSV_COLUMNS
    assert {r["case"] for r in rows} == {c.id for c in B.case_plan(load_dataset(tiny_dataset, B.ROLES), "quick")}
    assert {r["bone"] for r in rows} >= {"Femur", "Tibia"}
    assert all(0.0 <= float(r["dice"]) <= 1.0 for r in rows)
    assert all(r["model"] == "tiny-phantom/v1" for r in rows)
    saved = json.loads((out / "summary.json").read_text())
    assert saved["n_cases"] == 3 and set(saved["bones"]) >= {"Femur", "Tibia"}
    assert saved["line"] == lines[-1] and saved["line"].startswith("tiny-phantom/v1 benchmark")
    assert (out / "benchmark.png").stat().st_size > 1000
    assert not B.compare(saved, saved) and summary["bones"] == saved["bones"]


def test_the_ceiling_of_a_grid_is_what_perfect_probabilities_on_it_score(tiny_dataset, tmp_path):
    from trainer.ceiling import grid_ceiling, perfect_probabilities

    fine = grid_ceiling(tiny_dataset, 1.0, "centre", cases="quick", out=tmp_path / "c.csv", log=lambda *_: None)
    coarse = grid_ceiling(tiny_dataset, 3.0, "centre", cases="quick", log=lambda *_: None)
    fractions = grid_ceiling(tiny_dataset, 3.0, "fractions", cases="quick", log=lambda *_: None)
    for bone in ("Femur", "Tibia"):
        assert 0.9 < fine[bone]["mean"] < 1.0  # the grid alone costs something, even at 1 mm
        assert coarse[bone]["mean"] < fine[bone]["mean"] - 0.01  # a coarser grid allows less...
        assert fractions[bone]["mean"] > coarse[bone]["mean"]  # ...and fractions win back part of it
    rows = (tmp_path / "c.csv").read_text().splitlines()
    assert rows[0] == "case,bone,dice" and len(rows) > 3
    m = load_dataset(tiny_dataset, B.ROLES)[0]
    image, _ = R.render_case(m, "sagittal", "T1", 1)
    grid, _ = whole_image_grid(image, (3.0,) * 3, (24, 24, 24), 8)
    centre, soft = perfect_probabilities(m, grid, "centre"), perfect_probabilities(m, grid, "fractions")
    assert set(np.unique(centre).tolist()) == {0.0, 1.0} and np.allclose(centre.sum(0), 1.0)
    assert np.allclose(soft.sum(0), 1.0, atol=1e-3) and ((soft > 0.05) & (soft < 0.95)).any()
    with pytest.raises(ValueError, match="form"):
        perfect_probabilities(m, grid, "blurred")
