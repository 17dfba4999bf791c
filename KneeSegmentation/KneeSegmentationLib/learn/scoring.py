"""How well a model segments corrected cases: the one scoring that retraining's comparison
(``learn.compare.compare_on_cases``) and the trainer's evaluation (``trainer/evaluate.py``) both report.

Each case is segmented through the module's whole pipeline (``run_segmentation``, in the case's own geometry,
N4 included), so the figures are what a user would get; every bone present in the case's corrected labels is
scored against them (a bone absent from the labels is not scored for that case). Torch is imported only when a
case is segmented (through the pipeline), so this module loads where torch is not installed; the segmenting
step can be passed in (``segment``), which lets a test score a known label map.

    cases = [read_case_for_scoring(folder) for folder in case_dirs]
    scores = score_cases(load_model(path), cases, device="cpu")
    scores[0].bones["Femur"]["dice"]
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import SimpleITK as sitk

from .cases import IMAGE_FILE, LABEL_FILE
from ..constants import BONES
from ..metrics import bone_metrics

if TYPE_CHECKING:
    from ..models.store import LoadedModel

Segmenter = Callable[[sitk.Image], sitk.Image]  # image -> uint8 label map in the image's geometry


@dataclass(frozen=True)
class ScoringCase:
    """A corrected case to score against: its image (float32) and its labels (z, y, x) on the same grid."""

    name: str
    image: sitk.Image
    labels: np.ndarray


@dataclass(frozen=True)
class CaseScore:
    """One case's figures per bone (``{"Femur": {"dice": …}, …}``, in ``BONES`` order)."""

    case: str
    bones: dict[str, dict[str, float]]


def read_case_for_scoring(folder: Path) -> ScoringCase:
    """A case folder (``image.nrrd`` + ``label.nrrd``) named after the folder."""
    folder = Path(folder)
    return ScoringCase(folder.name, sitk.ReadImage(str(folder / IMAGE_FILE), sitk.sitkFloat32),
                       sitk.GetArrayFromImage(sitk.ReadImage(str(folder / LABEL_FILE))))


def pipeline_segmenter(model: "LoadedModel", device: str = "cpu", n4: bool = True) -> Segmenter:
    """Segments an image the way the module does (``run_segmentation`` with ``model`` on ``device``)."""
    from ..segment.pipeline import SegmentationSettings, run_segmentation

    settings = SegmentationSettings(model=model, device=device, n4=n4)
    return lambda image: run_segmentation(image, settings).labelmap


def score_cases(model: "LoadedModel | None", cases: Sequence[ScoringCase], device: str = "cpu", n4: bool = True,
                surface: bool = False, segment: Segmenter | None = None) -> list[CaseScore]:
    """Segments each case with ``model`` (or ``segment``) and scores every bone of its labels: Dice, and with
    ``surface`` also HD95, mean surface distance (mm, in the case's spacing) and the relative volume error."""
    segment = segment or pipeline_segmenter(model, device, n4)
    scores = []
    for case in cases:
        pred = sitk.GetArrayFromImage(segment(case.image))
        spacing_zyx = case.image.GetSpacing()[::-1]
        scores.append(CaseScore(case.name, {
            b.name: bone_metrics(pred, case.labels, spacing_zyx, b.label, surface)
            for b in BONES if (case.labels == b.label).any()}))
    return scores
