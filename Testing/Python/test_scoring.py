"""One scoring of models on corrected cases (``KneeSegmentationLib.learn.scoring``): its Dice is the hand-computed one,
and retraining's comparison and the trainer's evaluation both report it."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from KneeSegmentationLib.learn import scoring
from KneeSegmentationLib.learn.compare import compare_on_cases
from KneeSegmentationLib.learn.scoring import ScoringCase, score_cases

from trainer_data import write_case


def _image(shape=(4, 4, 4), spacing=(1.0, 1.0, 2.0)) -> sitk.Image:
    image = sitk.GetImageFromArray(np.zeros(shape, np.float32))
    image.SetSpacing(spacing)
    return image


def _labels(array: np.ndarray, like: sitk.Image) -> sitk.Image:
    out = sitk.GetImageFromArray(array.astype(np.uint8))
    out.CopyInformation(like)
    return out


def test_the_dice_of_a_tiny_case_is_the_hand_computed_one():
    truth = np.zeros((4, 4, 4), np.uint8)
    truth[0, :2, :4] = 1  # femur: 8 voxels
    truth[3, 0, 0] = 2  # tibia: 1 voxel, missed
    pred = np.zeros_like(truth)
    pred[0, :1, :4] = 1  # 4 of the femur's voxels
    pred[1, 0, :2] = 1  # and 2 outside it: 6 predicted, 4 overlapping
    image = _image()
    [scored] = score_cases(None, [ScoringCase("tiny", image, truth)], surface=True,
                           segment=lambda img: _labels(pred, img))
    assert scored.case == "tiny" and list(scored.bones) == ["Femur", "Tibia"]  # no fibula in the labels: unscored
    assert scored.bones["Femur"]["dice"] == pytest.approx(2 * 4 / (8 + 6))
    assert scored.bones["Femur"]["volume_error"] == pytest.approx((6 - 8) / 8)
    assert scored.bones["Tibia"]["dice"] == 0.0 and scored.bones["Tibia"]["hd95_mm"] == float("inf")
    assert set(score_cases(None, [ScoringCase("t", image, truth)], segment=lambda img: _labels(pred, img))[0]
               .bones["Femur"]) == {"dice"}


@pytest.fixture
def half_femur(monkeypatch):
    """Both callers' segmenting replaced by one that finds the case's labels, less the femur in the first half
    of the slices; returns the Dice that makes, computed by hand."""
    expected = {}

    def segmenter(model, device="cpu", n4=True):
        def segment(image):
            truth = sitk.GetArrayFromImage(image).astype(np.uint8)  # the stub case's image is its labels
            pred = truth.copy()
            half = pred[: pred.shape[0] // 2]
            half[half == 1] = 0
            t, k = int((truth == 1).sum()), int((pred == 1).sum())
            expected["Femur"] = 2 * k / (t + k)
            return _labels(pred, image)
        return segment

    monkeypatch.setattr(scoring, "pipeline_segmenter", segmenter)
    return expected


def test_retraining_and_the_trainer_report_the_same_scoring(half_femur, tiny_model, tmp_path):
    from trainer.evaluate import evaluate_cases

    folder = write_case(tmp_path / "cases" / "case_a", seed=1)
    labels = sitk.ReadImage(str(folder / "label.nrrd"))
    sitk.WriteImage(sitk.Cast(labels, sitk.sitkFloat32), str(folder / "image.nrrd"))  # see ``half_femur``
    [compared] = compare_on_cases([tiny_model], [folder])
    rows = evaluate_cases(None, tmp_path / "cases")
    femur = [r for r in rows if r["bone"] == "Femur"]
    assert compared["cases"][0]["Femur"] == round(half_femur["Femur"], 4) == compared["dice"]["Femur"]
    assert len(femur) == 1 and femur[0]["dice"] == pytest.approx(half_femur["Femur"])
    assert half_femur["Femur"] < 1
    assert {r["bone"] for r in rows} == set(compared["cases"][0]) - {"case"}
    assert all(r["dice"] == 1.0 for r in rows if r["bone"] != "Femur")
    assert set(femur[0]) == {"source", "case", "map", "bone", "dice", "hd95_mm", "msd_mm", "volume_error", "ece"}
