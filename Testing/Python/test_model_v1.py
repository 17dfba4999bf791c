"""The bundled model knee-bones v1 held to a floor: it loads safely, is small, finds the bones of the real
multi-echo sample in plausible places and volumes, and keeps a Dice floor on a held-out rendered case.

Floors are set below the figures measured at export (see the model card), so a damaged or retrained
model that is clearly worse fails here. One pipeline run (no N4) and one rendered case: ~20 s on 2 cores.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from KneeSegmentationLib.infer import predict_probabilities
from KneeSegmentationLib.metrics import dice
from KneeSegmentationLib.modelfile import bundled_models_root, load_model
from KneeSegmentationLib.pipeline import SegmentationSettings, run_segmentation

from realdata import mskt_data, mskt_dicom

MODEL = bundled_models_root() / "knee-bones" / "v1"
MAX_MB = 10
# Floors (measured at export minus a margin; see MODEL_CARD.md).
FLOOR_HELDOUT_DICE = {"Femur": 0.7, "Tibia": 0.7}  # measured 0.89 / 0.88 (mean of 4), min 0.83 / 0.85
SAMPLE_VOLUME_ML = {1: (60, 700), 2: (30, 500)}  # femur, tibia within the 16 x 16 x 9.6 cm field of view


@pytest.fixture(scope="module")
def model():
    return load_model(MODEL)


def test_loads_safely_and_is_small(model):
    assert (MODEL / "model.safetensors").stat().st_size < MAX_MB * 1e6
    assert model.card.name == "knee-bones" and model.card.version == 1
    assert model.card.labels == {1: "Femur", 2: "Tibia", 3: "Fibula"}
    assert model.card.metrics and model.card.training.get("steps")
    assert (MODEL / "MODEL_CARD.md").is_file()


def test_finds_the_bones_of_the_real_sample_in_plausible_places(model):
    from KneeSegmentationLib.io import read_image

    image = read_image(mskt_dicom(), echo=0)
    result = run_segmentation(image, SegmentationSettings(model=model, device="cpu", n4=False))
    lab = sitk.GetArrayFromImage(result.labelmap)
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000
    centroids = {}
    for label, (lo, hi) in SAMPLE_VOLUME_ML.items():
        volume = (lab == label).sum() * voxel_ml
        assert lo < volume < hi, f"label {label}: {volume:.0f} ml"
        idx = np.argwhere(lab == label).mean(axis=0)[::-1]
        centroids[label] = np.array(result.labelmap.TransformContinuousIndexToPhysicalPoint(idx.tolist()))
    # LPS: z grows superiorly; the femur lies above the tibia
    assert centroids[1][2] > centroids[2][2] + 10


def test_dice_floor_on_a_held_out_rendered_case(model, tmp_path):
    from trainer.dataset import mskt_sources, prepare_map
    from trainer.generator import Generator
    from trainer.dataset import LabelMap

    src = next(s for s in mskt_sources(mskt_data()) if s.role == "val")
    image, entry = prepare_map(src)
    labels = sitk.GetArrayFromImage(image)
    m = LabelMap(entry["id"], "val", labels, np.array(image.GetOrigin()), entry["spacing_mm"],
                 np.array(entry["joint_center_lps"]), np.zeros((0, 3)), entry)
    pre = model.card.preprocessing
    gen = Generator([m], pre.spacing_mm[0], tuple(pre.patch_size), pre.normalization)
    s = gen.sample(np.random.default_rng(11), torch.Generator().manual_seed(11), map_index=0, center=m.joint_center)
    prob, _, _ = predict_probabilities(model.network, s.image, pre.patch_size, torch.device("cpu"))
    pred = prob.argmax(0)
    for name, label in (("Femur", 1), ("Tibia", 2)):
        assert dice(pred == label, s.target == label) > FLOOR_HELDOUT_DICE[name], name
