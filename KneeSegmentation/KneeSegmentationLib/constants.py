"""Names, label values, colours and terminology of the bones we segment, defined once.

Every front end (Slicer module, CLI, trainer) takes the label meaning from here, so a label value in a model,
a labelmap file and a segment always mean the same bone.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Bone:
    """One segmentable structure: its label value in labelmaps, display name, colour and SNOMED CT code."""

    label: int
    name: str
    color: tuple[float, float, float]  # RGB in [0, 1]
    snomed_code: str
    snomed_meaning: str


# Colours: distinct on greyscale MRI and between neighbours (femur and tibia touch, tibia and fibula touch).
# Femur uses the bone colour of Slicer's generic anatomy table (241, 214, 145); tibia and fibula are shifted
# in hue so the joint line and the tibiofibular joint stay visible.
FEMUR = Bone(1, "Femur", (241 / 255, 214 / 255, 145 / 255), "71341001", "Femur")
TIBIA = Bone(2, "Tibia", (216 / 255, 132 / 255, 105 / 255), "12611008", "Tibia")
FIBULA = Bone(3, "Fibula", (111 / 255, 184 / 255, 210 / 255), "87342007", "Fibula")
# The patella sits in front of the femur's trochlea: a violet that stands apart from the femur's yellow.
PATELLA = Bone(4, "Patella", (186 / 255, 131 / 255, 222 / 255), "64234005", "Patella")

BONES: tuple[Bone, ...] = (FEMUR, TIBIA, FIBULA, PATELLA)
BONE_BY_LABEL: dict[int, Bone] = {b.label: b for b in BONES}
BONE_BY_NAME: dict[str, Bone] = {b.name: b for b in BONES}
NUM_CLASSES = len(BONES) + 1  # background + bones
# Models made before the Patella class predict background, Femur, Tibia and Fibula only; they still load and
# run (their Patella segment stays empty). A model's classes are always the first ``out_channels`` labels.
SUPPORTED_CLASS_COUNTS = (4, NUM_CLASSES)

# SNOMED CT category and coding scheme, as used by Slicer's anatomy terminology tables.
SNOMED_SCHEME = "SCT"
CATEGORY_CODE = "123037004"
CATEGORY_MEANING = "Anatomical Structure"
TERMINOLOGY_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"

# Segment tag that Slicer uses for the KneeSegmentation provenance (model name and version).
MODEL_TAG = "KneeSegmentation.Model"

# Devices a run may ask for ("auto": CUDA, then MPS, then CPU). Here, not in segment/infer.py, so that parsing the
# command line does not import torch.
DEVICES = ("auto", "cpu", "cuda", "mps")
