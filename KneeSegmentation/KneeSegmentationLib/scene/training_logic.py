"""Scene-level logic of the correct-and-retrain loop, for the module's panel (no Qt; tested under slicer-core).

    training = TrainingLogic(slicer.mrmlScene, dataset_dir=training_cases_dir(settings_folder))
    training.remember_model_output(segmentation_node, result.labelmap, result.model.tag)  # after each Apply
    case = training.save_case(volume_node, segmentation_node, echo)  # "Save as training case", after editing
    job = training.start_retrain(steps=200)                       # "Retrain"; poll job from a QTimer
    job.stop()                                                    # "Stop"
    training.model_choices(); training.select_version(path)       # picker with metrics; rollback

The model's first result is kept as a hidden labelmap node referenced by the segmentation node (reference role
``KneeSegmentation.ModelOutput``), so it is saved with the scene and a case saved later still knows how much
the user edited. A segmentation without it is saved without the edit record (``case.json`` ``edit: null``).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Iterable

import SimpleITK as sitk

from ..learn.cases import CaseInfo, list_cases, save_training_case
from ..constants import MODEL_TAG
from ..errors import InputError
from ..models.registry import default_model, select_default_model
from ..paths import bundled_models_root, training_cases_dir, user_models_root
from .choices import ModelChoice, model_choices
from .mrml import image_from_volume_node, volume_node_from_image
from ..learn.retrain import RetrainJob
from ..learn.status import RetrainSettings
from .segments import model_tag_of

MODEL_OUTPUT_ROLE = "KneeSegmentation.ModelOutput"
MODEL_OUTPUT_SUFFIX = " model output"


# ----------------------------------------------------------------------------------- the model's output
def remember_model_output(segmentation_node, labelmap: sitk.Image, model_tag: str | None = None):
    """Keeps ``labelmap`` (the model's result, on the input grid) as a hidden labelmap node referenced by
    ``segmentation_node``; replaces an earlier one. Returns the hidden node."""
    scene = segmentation_node.GetScene()
    old = segmentation_node.GetNodeReference(MODEL_OUTPUT_ROLE)
    node = volume_node_from_image(scene, sitk.Cast(labelmap, sitk.sitkUInt8),
                                  segmentation_node.GetName() + MODEL_OUTPUT_SUFFIX, labelmap=True)
    node.SetHideFromEditors(True)
    if model_tag:
        node.SetAttribute(MODEL_TAG, model_tag)
    segmentation_node.SetNodeReferenceID(MODEL_OUTPUT_ROLE, node.GetID())
    if old is not None:
        scene.RemoveNode(old)
    return node


def model_output_of(segmentation_node) -> tuple[sitk.Image | None, str | None]:
    """The remembered model result and its model tag, or (None, None)."""
    node = segmentation_node.GetNodeReference(MODEL_OUTPUT_ROLE)
    if node is None:
        return None, None
    return image_from_volume_node(node), node.GetAttribute(MODEL_TAG)


def _source_of(volume_node) -> str:
    storage = volume_node.GetStorageNode()
    name = storage.GetFileName() if storage is not None else None
    return Path(name).name if name else volume_node.GetName()


# ------------------------------------------------------------------------------------------- the logic
class TrainingLogic:
    """Save corrected cases, retrain, and choose model versions, for one MRML scene."""

    def __init__(self, scene, dataset_dir: Path | str | None = None, models_root: Path | str | None = None,
                 model_roots: Iterable[Path] | None = None) -> None:
        self.scene = scene
        self.dataset_dir = Path(dataset_dir) if dataset_dir is not None else training_cases_dir()
        self.models_root = Path(models_root) if models_root is not None else user_models_root()
        self.model_roots = list(model_roots) if model_roots is not None else None

    # -- cases
    remember_model_output = staticmethod(remember_model_output)

    def save_case(self, volume_node, segmentation_node, echo: int | None = None, source: str | None = None) -> Path:
        """Exports the (edited) segmentation onto the volume's grid and saves it with the image (the chosen
        ``echo`` of a multi-echo volume) as a new case; returns the case folder."""
        if volume_node is None or segmentation_node is None:
            raise InputError("choose the input volume and the corrected segmentation first")
        from .echoes import image_for_echo  # noqa: PLC0415 - the module's scene logic (slicer.util)
        from .segments import segmentation_to_labelmap  # noqa: PLC0415 - needs slicer's segmentation classes

        image = image_for_echo(volume_node, echo)
        corrected = segmentation_to_labelmap(segmentation_node, volume_node)
        original, tag = model_output_of(segmentation_node)
        if source is None:
            source = _source_of(volume_node) + (f" (echo {echo + 1})" if echo is not None and echo > 0 else "")
        return save_training_case(image, corrected, self.dataset_dir, original=original, source=source,
                                  model_tag=tag or model_tag_of(segmentation_node))

    def cases(self) -> list[CaseInfo]:
        return list_cases(self.dataset_dir)

    # -- retraining
    def retrain_settings(self, **overrides) -> RetrainSettings:
        base = RetrainSettings(model=self.default_version(), cases=self.dataset_dir, root=self.models_root)
        return replace(base, **overrides)

    def start_retrain(self, **overrides) -> RetrainJob:
        """Starts fine-tuning the default model (or ``model=``) on the saved cases in a child process."""
        return RetrainJob(self.retrain_settings(**overrides)).start()

    # -- versions
    def _roots(self) -> list[Path]:
        """The roots searched for versions; the user root (where selections and retrained versions go) is
        always one of them."""
        base = self.model_roots if self.model_roots is not None else [bundled_models_root()]
        return list(dict.fromkeys([*base, self.models_root]))

    def default_version(self) -> Path:
        return default_model(self._roots()).path

    def model_choices(self) -> list[ModelChoice]:
        """The picker's records (``choices.model_choices``): the default and the user metrics of these roots."""
        return model_choices(self._roots(), self.models_root)

    def select_version(self, model_dir: Path | str) -> None:
        """Makes ``model_dir`` the default from now on (also a rollback to an older version)."""
        select_default_model(model_dir, self.models_root, roots=self._roots())


# ------------------------------------------------------------------------------------------ live curve
def curve_points(status, width: int, height: int, margin: int = 4) -> dict[str, list[tuple[float, float]]]:
    """Pixel polylines of the loss (scaled to its own maximum) and of the validation Dice (0–1) against
    the step, for a ``width`` x ``height`` widget (y grows downwards); the panel draws them with QPainter."""
    total = max(status.total_steps, max([s for s, _ in status.loss] + [s for s, _ in status.validation] + [1]))
    w, h = max(width - 2 * margin, 1), max(height - 2 * margin, 1)

    def xy(step: float, value: float) -> tuple[float, float]:
        return margin + w * step / total, margin + h * (1.0 - min(max(value, 0.0), 1.0))

    top = max([v for _, v in status.loss] + [1e-9])
    return {"loss": [xy(s, v / top) for s, v in status.loss],
            "dice": [xy(s, v["score"]) for s, v in status.validation]}
