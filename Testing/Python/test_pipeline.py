"""The whole pipeline with a real (tiny) trained model on the analytic phantom, in many geometries."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import SimpleITK as sitk

from KneeSegmentationLib.errors import Cancelled, InputError, ModelError
from KneeSegmentationLib.models.store import load_model
from KneeSegmentationLib.segment.pipeline import SegmentationSettings, run_segmentation
from KneeSegmentationLib.segment.preprocess import (RoiBox, joint_center, model_grid_around, physical_bounds,
                                            whole_image_grid)
from KneeSegmentationLib.progress import CancelToken, LinkedToken

from phantom import phantom, phantom_image, phantom_labels

ROT = sitk.VersorTransform((1.0, 0.3, 0.2), 0.4).GetMatrix()
SAGITTAL_PIR = (0, 0, -1, 1, 0, 0, 0, -1, 0)  # like the label maps of the real knees


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1))


def _settings(model, **kw) -> SegmentationSettings:
    return SegmentationSettings(model=load_model(model), device="cpu", n4=kw.pop("n4", False), **kw)


@pytest.mark.parametrize("size, spacing, direction", [
    ((64, 64, 40), (1.5, 1.5, 2.5), None),               # axial
    ((40, 64, 64), (4.0, 1.2, 1.2), SAGITTAL_PIR),       # sagittal, 4 mm slices
    ((56, 56, 30), (1.6, 1.6, 3.0), ROT),                # oblique
])
def test_segments_the_phantom_in_any_geometry(tiny_model, size, spacing, direction):
    image, labels = phantom(size=size, spacing=spacing, direction=direction, seed=3)
    stages = []
    result = run_segmentation(image, _settings(tiny_model), progress=lambda f, s: stages.append((f, s)))
    got, truth = sitk.GetArrayFromImage(result.labelmap), sitk.GetArrayFromImage(labels)
    assert result.labelmap.GetSize() == image.GetSize()
    assert np.allclose(result.labelmap.GetDirection(), image.GetDirection())
    assert np.allclose(result.labelmap.GetOrigin(), image.GetOrigin())
    for label in (1, 2, 3):
        assert dice(got == label, truth == label) > 0.8, f"label {label}"
    fractions = [f for f, _ in stages]
    assert all(b >= a - 1e-9 for a, b in zip(fractions, fractions[1:])) and fractions[-1] == pytest.approx(1.0)
    assert {s for _, s in stages} >= {"Segmenting", "Post-processing"}


def test_a_large_field_of_view_is_segmented_whole(tiny_model):
    """The knee lies off-centre in a field of view larger than one enlarged window: overlapping tiles cover
    the whole image, so the bones are found wherever they are, with no overview pass deciding where to look."""
    center = (25.0, -20.0, 22.0)
    grid = model_grid_around((0, 0, 0), (2.5, 2.5, 2.5), (72, 72, 72))  # 180 mm: 2 x 2 x 2 tiles of 120 mm
    labels = phantom_labels(grid, center=center)
    image = phantom_image(labels, seed=1)
    pre = load_model(tiny_model).card.preprocessing
    _, window = whole_image_grid(image, pre.spacing_mm, pre.patch_size, 8)
    assert window == tuple(pre.patch_size)  # tiled, not one window
    result = run_segmentation(image, _settings(tiny_model))
    assert "overview pass" not in result.timings
    got, truth = sitk.GetArrayFromImage(result.labelmap), sitk.GetArrayFromImage(labels)
    # The tiny phantom model was trained on windows around the joint only, so a tile that misses the joint
    # confuses femur and tibia a little (0.82 / 0.81 here); the real models learn from crops along whole bones.
    for label, floor in ((1, 0.78), (2, 0.78), (3, 0.9)):
        assert dice(got == label, truth == label) > floor, label


def test_whole_image_grid_tiles_a_tall_image_at_the_model_spacing():
    image = sitk.Image([200, 200, 200], sitk.sitkFloat32)  # 400 mm field of view
    image.SetSpacing((2.0, 2.0, 2.0))
    grid, window = whole_image_grid(image, (1.5,) * 3, (96, 96, 96), 8)
    assert grid.GetSpacing()[0] == pytest.approx(1.5) and min(grid.GetSize()) >= 266
    lo, hi = physical_bounds(grid)
    ilo, ihi = physical_bounds(image)
    assert np.all(lo <= ilo) and np.all(hi >= ihi)
    assert window == (96, 96, 96)


def test_a_slightly_larger_image_gets_one_enlarged_window():
    image = sitk.Image([256, 256, 24], sitk.sitkFloat32)  # like the MESE sample: 160 x 160 x 96 mm
    image.SetSpacing((0.625, 0.625, 4.0))
    grid, window = whole_image_grid(image, (1.5,) * 3, (96, 96, 96), 8)
    assert grid.GetSize() == (112, 112, 96) and window == (96, 112, 112)
    lo, hi = physical_bounds(grid)
    ilo, ihi = physical_bounds(image)
    assert np.all(lo <= ilo) and np.all(hi >= ihi)


def test_roi_restricts_the_result(tiny_model):
    image, labels = phantom(size=(64, 64, 40), spacing=(1.5, 1.5, 2.5))
    roi = RoiBox((0.0, 0.0, 20.0), (80.0, 80.0, 30.0))  # around the femur only
    result = run_segmentation(image, _settings(tiny_model, roi=roi))
    got = sitk.GetArrayFromImage(result.labelmap)
    ras = np.argwhere(got > 0)
    pts = np.array([result.labelmap.TransformIndexToPhysicalPoint([int(i) for i in p[::-1]]) for p in ras])
    lo, hi = np.array(roi.center_lps) - np.array(roi.size_mm) / 2, np.array(roi.center_lps) + np.array(roi.size_mm) / 2
    assert np.all(pts >= lo - 3.0) and np.all(pts <= hi + 3.0)  # within the ROI (to a voxel)
    truth = sitk.GetArrayFromImage(labels)
    in_roi = np.zeros(truth.shape, bool)
    idx = np.argwhere(truth == 1)
    femur_pts = np.array([labels.TransformIndexToPhysicalPoint([int(i) for i in p[::-1]]) for p in idx])
    in_roi[tuple(idx[np.all((femur_pts >= lo) & (femur_pts <= hi), axis=1)].T)] = True
    assert dice(got == 1, in_roi) > 0.6  # the femur inside the ROI is found (the tiny model sees little context)
    assert result.joint_center_lps == pytest.approx(roi.center_lps)


def test_n4_tta_and_uncertainty(tiny_model):
    image, labels = phantom(size=(48, 48, 32), spacing=(2.0, 2.0, 3.0))
    result = run_segmentation(image, _settings(tiny_model, n4=True, tta=True, uncertainty=True))
    unc = sitk.GetArrayFromImage(result.uncertainty)
    assert result.uncertainty.GetSize() == image.GetSize()
    assert 0.0 <= unc.min() and unc.max() <= 1.0
    truth = sitk.GetArrayFromImage(labels)
    got = sitk.GetArrayFromImage(result.labelmap)
    assert dice(got == 1, truth == 1) > 0.8
    boundary = (truth == 1) != (got == 1)
    assert unc[boundary].mean() > unc[(truth == 0)].mean()  # less sure where it errs
    assert "n4" in result.timings


@pytest.mark.parametrize("flip_p, asked, mirrored", [
    (None, None, False), (0.5, None, True), (0.5, False, False), (None, True, True), (0.0, None, False)])
def test_the_mirrored_pass_follows_the_models_training_unless_asked(tiny_model, monkeypatch, flip_p, asked,
                                                                    mirrored):
    import dataclasses

    from KneeSegmentationLib.segment import infer

    model = load_model(tiny_model)
    if flip_p is not None:  # as a trainer-exported card records it
        card = dataclasses.replace(model.card, training={"synthesis": {"FLIP_LR_P": flip_p}})
        model = dataclasses.replace(model, card=card)
    seen, predict = [], infer.predict_probabilities
    monkeypatch.setattr(infer, "predict_probabilities", lambda *a, **k: seen.append(a[4]) or predict(*a, **k))
    image, _ = phantom(size=(48, 48, 32), spacing=(2.0, 2.0, 3.0))
    result = run_segmentation(image, SegmentationSettings(model=model, device="cpu", n4=False, tta=asked))
    assert seen == [mirrored]
    warned = any("not trained on mirrored knees" in w for w in result.warnings)
    assert warned == (asked is True and not flip_p)


def test_cancel_mid_run_raises_and_returns_nothing(tiny_model):
    image, _ = phantom(size=(64, 64, 40), spacing=(1.5, 1.5, 2.5))
    token = CancelToken()

    def progress(fraction, stage):
        if stage == "Segmenting":
            token.cancel()

    with pytest.raises(Cancelled):
        run_segmentation(image, _settings(tiny_model), progress=progress, cancel=token)


def test_cancel_from_another_thread(tiny_model):
    image, _ = phantom(size=(64, 64, 40), spacing=(1.5, 1.5, 2.5))
    token = CancelToken()
    token.cancel()
    errors = []
    t = threading.Thread(target=lambda: errors.append(_catch(image, tiny_model, token)))
    t.start()
    t.join(30)
    assert errors and isinstance(errors[0], Cancelled)


def _catch(image, model, token):
    try:
        run_segmentation(image, _settings(model), cancel=token)
    except Exception as e:  # noqa: BLE001 - the test inspects it
        return e
    return None


def _image(array, spacing=(1.0, 1.0, 1.0)):
    img = sitk.GetImageFromArray(np.asarray(array, np.float32))
    if img.GetDimension() == 3:
        img.SetSpacing(spacing)
    return img


@pytest.mark.parametrize("array, message", [
    (np.ones((32, 32), np.float32), "2D"),
    (np.zeros((16, 16, 16), np.float32), "constant"),
    (np.full((16, 16, 16), np.nan, np.float32), "NaN"),
])
def test_bad_input_is_refused_clearly(tiny_model, array, message):
    with pytest.raises(InputError, match=message):
        run_segmentation(_image(array), _settings(tiny_model))


def test_missing_model_is_a_model_error(tmp_path):
    image, _ = phantom(size=(24, 24, 24), spacing=(2, 2, 2))
    with pytest.raises(ModelError):
        run_segmentation(image, SegmentationSettings(model=tmp_path / "nope", n4=False))


def test_a_model_that_fails_to_load_beside_n4_stops_the_run_with_its_own_error(tmp_path):
    image, _ = phantom(size=(64, 64, 40), spacing=(1.5, 1.5, 2.5))
    stages = []
    with pytest.raises(ModelError):
        run_segmentation(image, SegmentationSettings(model=tmp_path / "nope", n4=True),
                         progress=lambda fraction, stage: stages.append(stage))
    assert "Segmenting" not in stages


def test_a_linked_token_is_cancelled_by_its_parent_but_never_cancels_it():
    parent = CancelToken()
    child = LinkedToken(parent)
    child.cancel()
    assert child.cancelled and not parent.cancelled
    with pytest.raises(Cancelled):
        child.check()
    other = LinkedToken(parent)
    parent.cancel()
    assert other.cancelled
    with pytest.raises(Cancelled):
        other.check()


def test_unknown_device_is_refused(tiny_model):
    image, _ = phantom(size=(24, 24, 24), spacing=(2, 2, 2))
    with pytest.raises(InputError, match="unknown device"):
        run_segmentation(image, SegmentationSettings(model=tiny_model, device="tpu", n4=False))


def test_gpu_requested_without_gpu_falls_back_with_warning(tiny_model):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU; the fallback is for machines without one")
    image, labels = phantom(size=(48, 48, 32), spacing=(2.0, 2.0, 3.0))
    result = run_segmentation(image, _settings(tiny_model, device="cuda") if False else
                              SegmentationSettings(model=tiny_model, device="cuda", n4=False))
    assert result.device == "cpu" and any("not available" in w for w in result.warnings)


def test_joint_center_falls_back_without_bones():
    grid = model_grid_around((0, 0, 0), (2, 2, 2), (16, 16, 16))
    center, warning = joint_center(np.zeros((16, 16, 16), np.uint8), grid)
    assert center is None and "no femur or tibia" in warning
