"""``kneeseg save-case / cases / retrain / select`` end to end, in-process, against real files and MRML."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from KneeSegmentationLib.cli.main import main
from KneeSegmentationLib.models.registry import default_model
from KneeSegmentationLib.scene.mrml import create_scene, volume_node_from_image
from KneeSegmentationLib.scene.segments import labelmap_to_segmentation, save_segmentation
from phantom import centered_grid, phantom_image, phantom_labels
from test_retrain import TINY_TRAINER_ARGS, tiny_parent
from trainer_data import make_tiny_dataset


def _write_case_inputs(folder, seed: int, shift: float):
    grid = centered_grid((24, 28, 26), (3.0, 3.0, 3.0), center=(shift, 0.0, 0.0))
    truth = phantom_labels(grid, center=(shift, 0.0, 0.0))
    image = phantom_image(truth, seed=seed)
    model = sitk.GetArrayFromImage(truth)
    model[model == 3] = 0
    model_image = sitk.GetImageFromArray(model)
    model_image.CopyInformation(truth)
    folder.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(folder / "knee.nrrd"))
    scene = create_scene()
    volume = volume_node_from_image(scene, image, "knee")
    save_segmentation(labelmap_to_segmentation(scene, model_image, volume, model_tag="tiny-retrain/v1"),
                      folder / "model.seg.nrrd")
    sitk.WriteImage(truth, str(folder / "corrected-labels.nrrd"))
    return folder / "knee.nrrd", folder / "model.seg.nrrd", folder / "corrected-labels.nrrd"


def test_save_case_retrain_select_from_the_command_line(tmp_path, monkeypatch, capsys):
    bundled, user, dataset = tmp_path / "bundled", tmp_path / "user", tmp_path / "cases"
    parent = tiny_parent(bundled)
    monkeypatch.setenv("KNEESEG_USER_MODELS", str(user))
    monkeypatch.setattr("KneeSegmentationLib.paths.bundled_models_root", lambda: bundled)
    for seed, shift in ((1, 0.0), (2, 6.0)):
        image, model_seg, corrected = _write_case_inputs(tmp_path / f"in{seed}", seed, shift)
        assert main(["save-case", str(image), str(corrected), "--original", str(model_seg),
                     "--dataset", str(dataset)]) == 0
    out = capsys.readouterr().out
    assert out.count("case saved") == 2 and "Fibula 0.000" in out
    metas = [json.loads(p.read_text()) for p in sorted(dataset.glob("*/case.json"))]
    assert [m["model"] for m in metas] == ["tiny-retrain/v1"] * 2  # read from the .seg.nrrd's segment tags
    # the same case twice is refused with a one-line error
    assert main(["save-case", str(image), str(corrected), "--dataset", str(dataset)]) == 1
    assert "saved already" in capsys.readouterr().err
    assert main(["cases", "--dataset", str(dataset)]) == 0 and "2 case(s)" in capsys.readouterr().out

    synthetic = make_tiny_dataset(tmp_path / "synth")
    args = ["retrain", "--cases", str(dataset), "--model", str(parent), "--steps", "2", "--synthetic",
            str(synthetic), "--device", "cpu", "--no-n4", "-q", *(f"--trainer-arg={a}" for a in TINY_TRAINER_ARGS)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "new version tiny-retrain/v2" in out and "mean Dice on held-out cases" in out
    new = user / "tiny-retrain" / "v2"
    assert (new / "model.json").is_file()

    assert main(["select", "tiny-retrain/v2"]) == 0 and default_model().path.resolve() == new.resolve()
    assert main(["select", str(parent)]) == 0 and default_model().path.resolve() == parent.resolve()
    assert main(["select", "tiny-retrain/v9"]) == 1
