"""The bundled models held to a floor: every version loads safely and is small; the default one (the newest)
finds the bones of the real multi-echo sample in plausible places and volumes and keeps a Dice floor on a
held-out rendered case.

Floors are set below the figures measured at export (see the model card), so a damaged or retrained
model that is clearly worse fails here. One pipeline run (no N4) and one rendered case: ~20 s on 2 cores.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from KneeSegmentationLib.segment.infer import predict_probabilities
from KneeSegmentationLib.metrics import dice
from KneeSegmentationLib.models.card import plain_summary
from KneeSegmentationLib.models.registry import default_model, list_models
from KneeSegmentationLib.models.store import load_model
from KneeSegmentationLib.paths import bundled_models_root
from KneeSegmentationLib.segment.pipeline import SegmentationSettings, run_segmentation

from realdata import mskt_data, mskt_dicom

BUNDLED = list_models([bundled_models_root()])
MAX_MB = 10
# Floors for the default model (knee-bones v12: measured at export minus a margin; see its MODEL_CARD.md).
FLOOR_HELDOUT_DICE = {"Femur": 0.95, "Tibia": 0.95}  # set on v4 (0.973 / 0.969 on this rendered case)
# The benchmark's case of the real held-out map in the coronal plane, through the full pipeline, on its
# acquisition grid: measured Femur 0.973, Tibia 0.966, Patella 0.924 with the mirrored pass (v5 0.973, 0.966,
# 0.926; v4: 0.970, 0.961, 0.915).
FLOOR_BENCHMARK_CASE = {"Femur": 0.95, "Tibia": 0.945, "Patella": 0.90}
# Within the 16 x 16 x 9.6 cm field of view, with N4 and the mirrored pass as the product runs (v12): femur 225,
# tibia 157, fibular head 3.7, patella 28 ml (a little too large: it takes part of the quadriceps tendon; the
# card's known limits; v5 29 ml, v4 37 ml).
SAMPLE_VOLUME_ML = {1: (60, 700), 2: (30, 500), 3: (1, 40), 4: (5, 35)}


@pytest.fixture(scope="module")
def model():
    return load_model(default_model([bundled_models_root()]).path)


def test_the_default_is_the_newest_bundled_version(model):
    assert model.card.name == "knee-bones" and model.card.version == max(e.version for e in BUNDLED) >= 3


@pytest.mark.parametrize("entry", BUNDLED, ids=lambda e: e.card.tag)
def test_every_bundled_version_loads_safely_and_is_small(entry):
    assert (entry.path / "model.safetensors").stat().st_size < MAX_MB * 1e6
    loaded = load_model(entry.path)  # safetensors + checksum; a pickle would be refused
    assert loaded.card.labels in ({1: "Femur", 2: "Tibia", 3: "Fibula"},
                                  {1: "Femur", 2: "Tibia", 3: "Fibula", 4: "Patella"})
    assert loaded.card.metrics and loaded.card.training.get("steps")
    assert (entry.path / "MODEL_CARD.md").is_file()


# What a reader of the panel or the card must not meet: absolute or run-folder paths, and project wording.
MACHINE_PATH = re.compile(r"(?<![\w.])(?:/[\w.-]+){2,}|~/|\bruns/|[A-Za-z]:\\")
ISSUE_WORDING = re.compile(r"\bissues?\b", re.IGNORECASE)  # "tissue" is fine


@pytest.mark.parametrize("entry", BUNDLED, ids=lambda e: e.card.tag)
def test_bundled_cards_speak_plainly(entry):
    """Descriptions and MODEL_CARD.md hold no machine paths and no issue wording; the one-line summary shown
    in the panel and by ``kneeseg info`` holds no dataset ids either."""
    card_md = (entry.path / "MODEL_CARD.md").read_text(encoding="utf-8")
    for where, text in (("description", entry.card.description), ("MODEL_CARD.md", card_md)):
        assert not MACHINE_PATH.search(text), f"{entry.card.tag} {where}: {MACHINE_PATH.search(text).group()}"
        assert not ISSUE_WORDING.search(text), f"{entry.card.tag} {where} speaks of issues"
    summary = plain_summary(entry.card)
    ids = {str(d.get("id")) for d in entry.card.training.get("data", [])} | set(entry.card.metrics.get("rendered", {}))
    assert ids and not any(i in summary for i in ids), summary
    assert summary.startswith(f"Knee bones v{entry.card.version} — Femur, Tibia, Fibula") and "held-out Dice 0." in summary


@pytest.fixture(scope="module")
def sample_result(model):
    from KneeSegmentationLib.segment.io import read_image

    image = read_image(mskt_dicom(), echo=0)
    result = run_segmentation(image, SegmentationSettings(model=model, device="cpu", n4=True))
    return sitk.GetArrayFromImage(result.labelmap), result.labelmap, float(np.prod(image.GetSpacing())) / 1000


def _centroid(labels: np.ndarray, geometry: sitk.Image, label: int) -> np.ndarray:
    index = np.argwhere(labels == label).mean(axis=0)[::-1]
    return np.array(geometry.TransformContinuousIndexToPhysicalPoint(index.tolist()))


def test_finds_the_bones_of_the_real_sample_in_plausible_places(sample_result):
    lab, geometry, voxel_ml = sample_result
    for label, (lo, hi) in SAMPLE_VOLUME_ML.items():
        volume = (lab == label).sum() * voxel_ml
        assert lo < volume < hi, f"label {label}: {volume:.0f} ml"
    # LPS: z grows superiorly, y posteriorly; the femur lies above the tibia, the patella in front of the femur
    assert _centroid(lab, geometry, 1)[2] > _centroid(lab, geometry, 2)[2] + 10
    assert _centroid(lab, geometry, 4)[1] < _centroid(lab, geometry, 1)[1] - 10


def test_finds_the_fibular_head_of_the_real_sample(sample_result):
    lab, geometry, voxel_ml = sample_result
    assert (lab == 3).sum() * voxel_ml > 1.0  # the head alone is several ml
    assert _centroid(lab, geometry, 3)[2] < _centroid(lab, geometry, 2)[2]  # below the tibial plateau's centre


def test_benchmark_floor_on_the_real_held_out_map(model):
    from trainer.benchmark import case_for, score_case
    from trainer.dataset import mskt_sources, prepare_map
    from trainer.dataset import LabelMap
    from trainer.render import render_case

    src = next(s for s in mskt_sources(mskt_data()) if s.role == "val")
    image, entry = prepare_map(src)
    m = LabelMap(entry["id"], "val", sitk.GetArrayFromImage(image), np.array(image.GetOrigin()), entry["spacing_mm"],
                 np.array(entry["joint_center_lps"]), {}, entry)
    case = case_for(m, "coronal")  # the benchmark's own case: same seed, contrast and acquisition
    acquired, truth = render_case(m, case.plane, case.contrast, case.seed)
    result = run_segmentation(acquired, SegmentationSettings(model=model, device="cpu", n4=True))
    rows = {r["bone"]: r for r in score_case(sitk.GetArrayFromImage(result.labelmap), sitk.GetArrayFromImage(truth),
                                             acquired.GetSpacing())}
    for bone, floor in FLOOR_BENCHMARK_CASE.items():
        assert rows[bone]["dice"] > floor, (bone, rows[bone]["dice"])


def test_dice_floor_on_a_held_out_rendered_case(model, tmp_path):
    from trainer.dataset import mskt_sources, prepare_map
    from trainer.generator import Generator
    from trainer.dataset import LabelMap

    src = next(s for s in mskt_sources(mskt_data()) if s.role == "val")
    image, entry = prepare_map(src)
    labels = sitk.GetArrayFromImage(image)
    m = LabelMap(entry["id"], "val", labels, np.array(image.GetOrigin()), entry["spacing_mm"],
                 np.array(entry["joint_center_lps"]), {}, entry)
    pre = model.card.preprocessing
    gen = Generator([m], pre.spacing_mm, tuple(pre.patch_size), pre.normalization)
    s = gen.sample(np.random.default_rng(11), torch.Generator().manual_seed(11), map_index=0, center=m.joint_center)
    prob, _, _ = predict_probabilities(model.network, s.image, pre.patch_size, torch.device("cpu"))
    pred = prob.argmax(0)
    for name, label in (("Femur", 1), ("Tibia", 2)):
        assert dice(pred == label, s.target == label) > FLOOR_HELDOUT_DICE[name], name


def test_bfloat16_and_float32_inference_agree_on_a_held_out_rendered_case(model, monkeypatch):
    """bfloat16 (used where the CPU has it) may move a boundary voxel, never a bone."""
    from trainer.dataset import LabelMap, mskt_sources, prepare_map
    from trainer.generator import Generator
    from KneeSegmentationLib.segment import precision

    src = next(s for s in mskt_sources(mskt_data()) if s.role == "val")
    image, entry = prepare_map(src)
    m = LabelMap(entry["id"], "val", sitk.GetArrayFromImage(image), np.array(image.GetOrigin()),
                 entry["spacing_mm"], np.array(entry["joint_center_lps"]), {}, entry)
    pre = model.card.preprocessing
    gen = Generator([m], pre.spacing_mm, tuple(pre.patch_size), pre.normalization)
    s = gen.sample(np.random.default_rng(5), torch.Generator().manual_seed(5), map_index=0, center=m.joint_center)
    preds = {}
    for switch in ("0", "1"):
        monkeypatch.setenv(precision.ENV_SWITCH, switch)
        preds[switch] = predict_probabilities(model.network, s.image, pre.patch_size, torch.device("cpu"))[0].argmax(0)
    for label in (1, 2, 4):
        assert dice(preds["0"] == label, preds["1"] == label) > 0.99, label
