"""The module-facing logic of the retrain loop under real MRML: save a corrected segmentation node as a case
(with how much was edited against the remembered model output), list versions for the picker, select and roll back."""
from __future__ import annotations

import json
import re
from dataclasses import fields
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from KneeSegmentationLib.learn.cases import LABEL_FILE, META_FILE
from KneeSegmentationLib.learn.compare import record_user_metrics
from KneeSegmentationLib.models.card import plain_summary, read_card
from KneeSegmentationLib.scene.choices import ModelChoice
from KneeSegmentationLib.scene.logic import SegmentationLogic
from KneeSegmentationLib.scene.mrml import volume_node_from_image
from KneeSegmentationLib.scene.segments import labelmap_to_segmentation
from KneeSegmentationLib.scene.training_logic import MODEL_OUTPUT_ROLE, TrainingLogic, model_output_of
from phantom import centered_grid, phantom_image, phantom_labels
from test_retrain import tiny_parent


def _knee():
    grid = centered_grid((30, 32, 28), (2.5, 2.5, 3.0), direction=np.diag([1.0, -1.0, 1.0]))
    truth = phantom_labels(grid)
    model = sitk.GetArrayFromImage(truth)
    model[model == 2] = 0  # the model missed the tibia; the user paints it back
    model_image = sitk.GetImageFromArray(model)
    model_image.CopyInformation(truth)
    return phantom_image(truth, seed=5), truth, model_image


def test_save_case_from_nodes_records_the_edit(scene, tmp_path):
    image, truth, model_output = _knee()
    volume = volume_node_from_image(scene, image, "knee")
    seg = labelmap_to_segmentation(scene, model_output, volume, model_tag="tiny/v1")
    logic = TrainingLogic(scene, dataset_dir=tmp_path / "cases", models_root=tmp_path / "user",
                          model_roots=[tmp_path / "bundled"])
    hidden = logic.remember_model_output(seg, model_output, "tiny/v1")
    assert hidden.GetHideFromEditors() and seg.GetNodeReference(MODEL_OUTPUT_ROLE) is hidden
    labelmap_to_segmentation(scene, truth, volume, segmentation_node=seg, model_tag="tiny/v1")  # the user's edit
    kept, tag = model_output_of(seg)
    assert tag == "tiny/v1" and np.array_equal(sitk.GetArrayFromImage(kept), sitk.GetArrayFromImage(model_output))

    folder = logic.save_case(volume, seg)
    meta = json.loads((folder / META_FILE).read_text())
    assert meta["model"] == "tiny/v1" and meta["source"] == "knee"
    assert meta["edit"]["dice"] == {"Femur": 1.0, "Tibia": 0.0, "Fibula": 1.0, "Patella": 1.0}
    saved = sitk.ReadImage(str(folder / LABEL_FILE))
    assert np.array_equal(sitk.GetArrayFromImage(saved), sitk.GetArrayFromImage(truth))
    assert np.allclose(saved.GetDirection(), image.GetDirection())
    assert [c.path for c in logic.cases()] == [folder]

    again = logic.remember_model_output(seg, truth)  # a new Apply replaces the remembered output
    assert scene.GetNodeByID(hidden.GetID()) is None and seg.GetNodeReference(MODEL_OUTPUT_ROLE) is again


def test_versions_select_and_rollback(scene, tmp_path):
    bundled, user = tmp_path / "bundled", tmp_path / "user"
    v1, v2 = tiny_parent(bundled), tiny_parent(bundled)
    logic = TrainingLogic(scene, dataset_dir=tmp_path / "cases", models_root=user, model_roots=[bundled])
    assert [(c.label, c.is_default) for c in logic.model_choices()] == [("tiny-retrain v1", False),
                                                                        ("tiny-retrain v2", True)]
    logic.select_version(v1)
    assert logic.default_version() == v1 and [c.is_default for c in logic.model_choices()] == [True, False]
    assert logic.retrain_settings(steps=5).model == v1 and logic.retrain_settings().root == user
    logic.select_version(v2)
    assert logic.default_version() == v2


def test_the_pickers_one_record_holds_the_default_the_user_metrics_and_the_plain_summary(scene, tmp_path):
    """The panel shows one record per version (``choices.ModelChoice``) and merges nothing: the record itself
    must say which version is the default, how a retrained one did on the user's cases, and what it is in plain
    words, and both scene logics must answer with the same records."""
    bundled, user = tmp_path / "bundled", tmp_path / "user"
    parent, retrained = tiny_parent(bundled), tiny_parent(bundled)
    record = {"parent": "tiny-retrain/v1", "held_out": True, "metrics": {"score": 0.8123},
              "parent_metrics": {"score": 0.7}}
    user.mkdir()
    record_user_metrics(user, retrained, record)
    training = TrainingLogic(scene, dataset_dir=tmp_path / "cases", models_root=user, model_roots=[bundled])
    training.select_version(parent)

    choices = training.model_choices()
    assert [(c.label, c.path, c.is_default) for c in choices] == [("tiny-retrain v1", parent, True),
                                                                  ("tiny-retrain v2", retrained, False)]
    assert [c.user_metrics for c in choices] == [None, record]
    assert choices[0].user_summary == "bundled"
    assert choices[1].user_summary == "Dice on your held-out cases 0.812 (was 0.700 with tiny-retrain/v1)"
    assert choices[1].summary == plain_summary(read_card(retrained)) and choices[1].summary.startswith("Tiny retrain v2")
    assert choices[1].description == "test parent" and choices[1].metrics == "no validation metrics"
    assert SegmentationLogic(scene, [bundled, user], models_root=user).model_choices() == choices

    # The panel reads only what the record holds.
    module = (Path(__file__).resolve().parents[2] / "KneeSegmentation" / "KneeSegmentation.py").read_text()
    used = set(re.findall(r"\b(?:choice|default)\.(\w+)", module))
    assert {"summary", "user_summary", "is_default"} <= used <= {f.name for f in fields(ModelChoice)} | {"user_summary"}


def test_curve_points_fit_the_widget():
    from KneeSegmentationLib.learn.status import RetrainStatus
    from KneeSegmentationLib.scene.training_logic import curve_points

    status = RetrainStatus("training", 20, 40, [(10, 2.0), (20, 1.0)], [(20, {"score": 0.5})], "", 1.0)
    pts = curve_points(status, 104, 54, margin=2)
    assert pts["loss"] == [(27.0, 2.0), (52.0, 27.0)]  # the largest loss at the top, half of it mid-height
    assert pts["dice"] == [(52.0, 27.0)]
