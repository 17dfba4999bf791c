"""Fine-tuning on corrected cases writes a new version and leaves the old one intact; bad cases are refused;
export and evaluate produce a loadable model and metrics."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import SimpleITK as sitk

from KneeSegmentationLib.errors import DatasetError
from KneeSegmentationLib.files import sha256_of
from KneeSegmentationLib.models.card import read_card
from KneeSegmentationLib.models.store import load_model
from KneeSegmentationLib.learn.contract import read_result

from trainer.cases import CaseSampler, load_cases
from trainer.evaluate import evaluate
from trainer.export import MODEL_CARD_MD, export
from trainer.config import TrainConfig
from trainer.finetune import finetune, parent_training_crop
from trainer.train import train

from trainer_data import make_tiny_dataset, tiny_config, write_case


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("tinyds_ft"))


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    root = tmp_path_factory.mktemp("cases")
    write_case(root / "case_a", seed=1)
    write_case(root / "case_b", seed=2)
    return root


def test_corrected_cases_load_and_sample_on_the_model_grid(cases):
    loaded = load_cases(cases)
    assert [c.id for c in loaded] == ["case_a", "case_b"]
    import numpy as np

    s = CaseSampler(loaded, 4.0, (16, 16, 16), {"lower_percentile": 1.0, "upper_percentile": 99.0}).sample(
        np.random.default_rng(0))
    assert s.image.shape == (16, 16, 16) and set(np.unique(s.target).tolist()) <= {0, 1, 2, 3}
    assert (s.target > 0).any()


@pytest.mark.parametrize("problem, message", [
    (dict(shift_label_origin=5.0), "different grids"),
    (dict(empty=True), "empty"),
    (dict(label_dtype=sitk.sitkInt16), "uint8"),
])
def test_bad_cases_are_rejected(tmp_path, problem, message):
    write_case(tmp_path / "bad", seed=1, **problem)
    with pytest.raises(DatasetError, match=message):
        load_cases(tmp_path)


def test_missing_case_files_are_rejected(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        load_cases(tmp_path / "nothing")
    with pytest.raises(DatasetError, match="no case folders"):
        load_cases(tmp_path)
    folder = write_case(tmp_path / "c", seed=1)
    (folder / "case.json").unlink()
    with pytest.raises(DatasetError, match="case.json is missing"):
        load_cases(tmp_path)
    (folder / "case.json").write_text("[1, 2")
    with pytest.raises(DatasetError, match="malformed"):
        load_cases(tmp_path)


def test_export_then_finetune_writes_a_new_version_and_keeps_the_old(dataset, cases, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(dataset, run, steps=2), resume=False, log=lambda *_: None)
    root = tmp_path / "models"
    v1 = export(run, root, "tiny-knee")
    assert v1.name == "v1" and (v1 / MODEL_CARD_MD).is_file()
    card = load_model(v1).card
    assert card.preprocessing.spacing_mm == (4.0, 4.0, 4.0) and card.training["steps"] == 2
    assert read_result(run)["model"] is None and read_result(run)["steps"] == 2  # a plain run exports later
    before = {p.name: sha256_of(p) for p in v1.iterdir()}

    cfg = tiny_config(dataset, tmp_path / "ft", steps=2, case_fraction=0.5)
    v2 = finetune(v1, cases, cfg, root, resume=False, log=lambda *_: None)
    assert v2 == root / "tiny-knee" / "v2"
    written = read_result(tmp_path / "ft")  # what retraining reads instead of the printed line
    assert written["model"] == str(v2.resolve()) and written["version"] == "tiny-knee/v2" and written["steps"] == 2
    new = load_model(v2).card
    assert new.parent == "tiny-knee/v1" and new.version == 2
    assert {p.name: sha256_of(p) for p in v1.iterdir()} == before  # the parent is untouched
    with pytest.raises(Exception, match="never overwritten"):
        export(run, root, "tiny-knee", version=1)


def test_finetuning_crops_like_the_parent_was_trained(tmp_path):
    """InstanceNorm normalizes over the crop: fine-tuning uses the parent's training crop (from its card)."""
    bundled = Path(__file__).resolve().parents[2] / "Resources" / "Models" / "knee-bones" / "v4"
    assert parent_training_crop(bundled) == tuple(read_card(bundled).training["settings"]["crop"]) == (80, 80, 80)
    hand_written = tmp_path / "v1"
    shutil.copytree(bundled, hand_written)
    card = json.loads((hand_written / "model.json").read_text())
    card["training"] = {"settings": {"crop": "big"}}
    (hand_written / "model.json").write_text(json.dumps(card))
    assert parent_training_crop(hand_written) == TrainConfig().crop


def test_evaluate_writes_metrics_for_rendered_and_corrected_cases(dataset, cases, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(dataset, run, steps=1), resume=False, log=lambda *_: None)
    out = tmp_path / "eval"
    metrics = evaluate(None, dataset, out, run=run, cases=cases, n_cases=1, echoes=False, log=lambda *_: None)
    assert set(metrics["rendered"]) == {"val_nofib", "train_fib"}
    assert {"Femur", "Tibia", "Fibula"} <= set(metrics["rendered"]["train_fib"])
    femur = metrics["rendered"]["val_nofib"]["Femur"]
    assert 0.0 <= femur["dice"] <= 1.0 and femur["n"] == 1 and "hd95_mm" in femur and "ece" in femur
    assert set(metrics["corrected_cases"]) == {"case_a", "case_b"}
    assert (out / "cases.csv").is_file() and (out / "dice.png").is_file() and (out / "previews.png").is_file()
    assert json.loads((out / "metrics.json").read_text())["evaluation"]["seed"] == 7
    shutil.rmtree(out)
