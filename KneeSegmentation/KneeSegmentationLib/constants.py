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

BONES: tuple[Bone, ...] = (FEMUR, TIBIA, FIBULA)
BONE_BY_LABEL: dict[int, Bone] = {b.label: b for b in BONES}
BONE_BY_NAME: dict[str, Bone] = {b.name: b for b in BONES}
NUM_CLASSES = len(BONES) + 1  # background + bones

# SNOMED CT category and coding scheme, as used by Slicer's anatomy terminology tables.
SNOMED_SCHEME = "SCT"
CATEGORY_CODE = "123037004"
CATEGORY_MEANING = "Anatomical Structure"
TERMINOLOGY_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"

# Segment tag that Slicer uses for the KneeSegmentation provenance (model name and version).
MODEL_TAG = "KneeSegmentation.Model"
