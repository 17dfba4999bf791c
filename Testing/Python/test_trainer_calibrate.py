"""Calibration: per-bone logit offsets fitted on validation anatomy, stored in the card, applied by inference."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk

from KneeSegmentationLib.errors import ModelError
from KneeSegmentationLib.models.card import ModelCard
from KneeSegmentationLib.models.plan import ModelPlan
from KneeSegmentationLib.models.store import load_model, save_model
from KneeSegmentationLib.segment.pipeline import SegmentationSettings, run_segmentation

from trainer import benchmark as B
from trainer import calibrate as C
from trainer.dataset import load_dataset
from trainer_data import make_tiny_dataset

from phantom import phantom


def _ball(shape, center, radius):
    z, y, x = np.ogrid[tuple(slice(0, s) for s in shape)]
    return (z - center[0]) ** 2 + (y - center[1]) ** 2 + (x - center[2]) ** 2 <= radius ** 2


def test_fit_finds_the_offset_that_undoes_a_too_thick_bone():
    """A 'model' whose fibula log-probability is too high by 1.0 everywhere (a class weight's prior shift):
    the fit must take about 1.0 off it and the Dice must rise."""
    shape = (40, 40, 40)
    truth = np.zeros(shape, np.uint8)
    truth[_ball(shape, (20, 20, 12), 8)] = 1
    truth[_ball(shape, (20, 20, 30), 4)] = 3
    dist_f = np.sqrt(((np.indices(shape) - np.array([20, 20, 30])[:, None, None, None]) ** 2).sum(0))
    logits = np.zeros((5, *shape), np.float32)
    logits[1] = np.where(truth == 1, 4.0, -4.0)
    logits[3] = 2.0 * (4 - dist_f) + 1.0  # crosses background (0) at 4.5 voxels instead of 4
    logp = logits - np.log(np.exp(logits).sum(0))
    case = C.CaseData("c", logp, ((0, 0, 0), shape[::-1]), truth, 0.01)
    before = C.mean_dice([case], np.zeros(5, np.float32))
    offsets = C.fit_offsets([case], 5, log=lambda s: None)
    after = C.mean_dice([case], offsets)
    assert offsets[0] == 0 and -1.5 <= offsets[3] <= -0.5, offsets
    assert after["Fibula"] > before["Fibula"] and after["Femur"] >= before["Femur"] - 1e-9
    assert offsets[4] == 0  # no case holds a patella: its offset is left alone


def test_calibration_cases_are_validation_maps_with_seeds_of_their_own(tmp_path):
    maps = load_dataset(make_tiny_dataset(tmp_path / "ds"))
    cases = C.calibration_cases(maps)
    assert {c.role for c in cases} == {"val"} and len(cases) == 3
    bench = {(c.map_id, c.plane): c for c in B.case_plan(maps)}
    assert all(c.seed != bench[(c.map_id, c.plane)].seed for c in cases)
    assert all(c.contrast != bench[(c.map_id, c.plane)].contrast for c in cases)


def test_calibrate_export_and_inference_apply_the_offsets(tmp_path, tiny_model, capsys):
    dataset = make_tiny_dataset(tmp_path / "ds")
    record = C.run_calibration(tiny_model, dataset, tmp_path / "cal", log=lambda s: None)
    stored = json.loads((tmp_path / "cal" / C.CALIBRATION_FILE).read_text())
    assert stored == record and stored["logit_offsets"][0] == 0 and len(stored["cases"]) == 3
    model = load_model(tiny_model)
    n = model.card.network.out_channels
    assert len(record["logit_offsets"]) == n
    # a card with offsets round-trips, and inference applies them: -10 on the femur removes most of it
    plan = model.card.plan.with_offsets([0.0, -10.0] + [0.0] * (n - 2))
    card = replace(model.card, plan=plan)
    assert ModelCard.from_dict(json.loads(json.dumps(card.to_dict()))).plan.logit_offsets == plan.logit_offsets
    out = save_model(model.network, card, tmp_path / "models", 2)
    from KneeSegmentationLib.cli.main import main

    assert main(["info", str(out)]) == 0
    assert f"output: logit offsets {list(plan.logit_offsets)}" in capsys.readouterr().out
    image, _ = phantom()
    plain = run_segmentation(image, SegmentationSettings(model=tiny_model, device="cpu", n4=False))
    shifted = run_segmentation(image, SegmentationSettings(model=out, device="cpu", n4=False))
    femur = [int((sitk.GetArrayFromImage(r.labelmap) == 1).sum()) for r in (plain, shifted)]
    assert femur[0] > 1000 and femur[1] < 0.2 * femur[0], femur


@pytest.mark.parametrize("offsets", [[0.0, 1.0], [0.0, float("nan"), 0, 0], [0, 0, 0, 99.0], "1,2"])
def test_broken_offsets_in_a_card_are_refused(tiny_model, offsets):
    d = json.loads((tiny_model / "model.json").read_text())
    d["output"] = {"logit_offsets": offsets}
    with pytest.raises(ModelError):
        ModelCard.from_dict(d)


def test_a_plan_without_offsets_writes_no_output_field():
    assert "output" not in ModelPlan().card_fields()
    assert ModelPlan().with_offsets([0, 0, 0, -1, 0]).card_fields()["output"] == {"logit_offsets": [0, 0, 0, -1, 0]}
