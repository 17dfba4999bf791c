"""Saving corrected cases: files and case.json right, atomic, never overwritten, bad cases refused."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from KneeSegmentationLib.learn.cases import IMAGE_FILE, LABEL_FILE, META_FILE, list_cases, save_training_case
from KneeSegmentationLib.errors import DatasetError, InputError
from KneeSegmentationLib.paths import training_cases_dir as default_dataset_dir
from phantom import centered_grid, phantom_image, phantom_labels


@pytest.fixture()
def knee():
    """A small oblique-free phantom: image, true labels, and a 'model output' with the tibia shrunk."""
    grid = centered_grid((40, 36, 30), (2.0, 2.0, 3.0), center=(5.0, -3.0, 10.0))
    truth = phantom_labels(grid, center=(5.0, -3.0, 10.0))
    image = phantom_image(truth, seed=3)
    wrong = sitk.GetArrayFromImage(truth)
    wrong[wrong == 3] = 0  # the model missed the fibula
    original = sitk.GetImageFromArray(wrong)
    original.CopyInformation(truth)
    return image, truth, original


def test_save_case_writes_image_label_and_metadata(knee, tmp_path):
    image, truth, original = knee
    folder = save_training_case(image, truth, tmp_path / "ds", original=original, source="knee.nrrd",
                                model_tag="tiny-phantom/v1")
    assert sorted(p.name for p in folder.iterdir()) == sorted([IMAGE_FILE, LABEL_FILE, META_FILE])
    label = sitk.ReadImage(str(folder / LABEL_FILE))
    assert label.GetPixelID() == sitk.sitkUInt8
    assert np.array_equal(sitk.GetArrayFromImage(label), sitk.GetArrayFromImage(truth))
    saved = sitk.ReadImage(str(folder / IMAGE_FILE))
    assert np.allclose(saved.GetOrigin(), image.GetOrigin()) and saved.GetSize() == image.GetSize()
    assert np.array_equal(sitk.GetArrayFromImage(saved), sitk.GetArrayFromImage(image))
    meta = json.loads((folder / META_FILE).read_text())
    assert meta["id"] == folder.name and meta["source"] == "knee.nrrd" and meta["model"] == "tiny-phantom/v1"
    assert meta["edit"]["dice"]["Femur"] == 1.0 and meta["edit"]["dice"]["Tibia"] == 1.0
    assert meta["edit"]["dice"]["Fibula"] == 0.0  # the whole fibula was added by the user
    fibula = int(np.count_nonzero(sitk.GetArrayFromImage(truth) == 3))
    assert meta["voxels"]["Fibula"] == fibula > 0 and meta["edit"]["changed_voxels"] == fibula
    assert meta["geometry"]["size"] == [40, 36, 30]
    # Nothing else in the dataset: the temporary folder was renamed, not copied.
    assert [p.name for p in (tmp_path / "ds").iterdir()] == [folder.name]
    # The trainer reads it back as a valid case.
    from trainer.cases import load_case

    case = load_case(folder)
    assert case.id == folder.name


def test_save_case_never_overwrites_and_refuses_duplicates(knee, tmp_path):
    image, truth, original = knee
    first = save_training_case(image, truth, tmp_path, original=original)
    stamp = (first / META_FILE).stat().st_mtime_ns
    with pytest.raises(DatasetError, match="saved already"):
        save_training_case(image, truth, tmp_path, original=original)
    edited = sitk.GetArrayFromImage(truth)
    edited[edited == 3] = 0
    edited_image = sitk.GetImageFromArray(edited)
    edited_image.CopyInformation(truth)
    second = save_training_case(image, edited_image, tmp_path)
    assert second != first and (first / META_FILE).stat().st_mtime_ns == stamp
    assert json.loads((second / META_FILE).read_text())["edit"] is None  # no model output given
    assert [c.path for c in list_cases(tmp_path)] == sorted([first, second])


def test_mismatched_empty_or_foreign_labels_are_refused(knee, tmp_path):
    image, truth, _ = knee
    shifted = sitk.Image(truth)
    shifted.SetOrigin([o + 1.0 for o in truth.GetOrigin()])
    with pytest.raises(InputError, match="not on the image's grid.*origin"):
        save_training_case(image, shifted, tmp_path)
    resized = sitk.Image([40, 36, 29], sitk.sitkUInt8)
    with pytest.raises(InputError, match="size"):
        save_training_case(image, resized, tmp_path)
    empty = sitk.Image(truth.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(truth)
    with pytest.raises(InputError, match="empty"):
        save_training_case(image, empty, tmp_path)
    foreign = sitk.GetArrayFromImage(truth)
    foreign[0, 0, 0] = 7
    foreign_image = sitk.GetImageFromArray(foreign)
    foreign_image.CopyInformation(truth)
    with pytest.raises(InputError, match=r"\[7\]"):
        save_training_case(image, foreign_image, tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a temporary folder


def test_default_dataset_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("KNEESEG_DATASET", raising=False)
    assert default_dataset_dir(tmp_path) == tmp_path / "KneeSegmentation" / "TrainingCases"
    assert default_dataset_dir().name == "TrainingCases"
    monkeypatch.setenv("KNEESEG_DATASET", str(tmp_path / "mine"))
    assert default_dataset_dir(tmp_path) == tmp_path / "mine"
