"""The whole segmentation, image in, labelmap out: validate → N4 → locate the knee → segment → clean up.

``run_segmentation`` touches no MRML and no GUI, so the Slicer module can run it in a worker thread, the CLI
in the main thread and the trainer in its evaluation loop: all three get exactly the same result.

Locating the knee: an image that fits one window at the model's spacing (enlarged by up to
``SINGLE_PASS_GROWTH``; the network is fully convolutional) is segmented in that single pass. A larger one is
first segmented on a coarse grid that shows all of it (at most 2x the model's spacing, tiled if needed). The femorotibial joint centre is where the femur comes
within ``JOINT_DISTANCE_MM`` of the tibia; the fine pass then sees a window of the model's patch size centred
there. This uses the model's own anatomical knowledge, needs no second model and works for any orientation.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk

from .constants import FEMUR, TIBIA
from .infer import choose_device, entropy, predict_probabilities
from .io import validate_image
from .modelfile import LoadedModel, default_model, load_model
from .n4 import n4_correct
from .postprocess import clean_labels, probabilities_to_labels, resample_channels
from .preprocess import RoiBox, grid_covering, image_center, model_grid_around, prepare_input, single_window_grid
from .progress import CancelToken, Progress, StageProgress, no_progress

JOINT_DISTANCE_MM = 6.0
STAGES = {"N4 bias correction": 25, "Locating the knee": 15, "Segmenting": 45, "Post-processing": 15}


@dataclass
class SegmentationSettings:
    """What a run should do; the same object backs the module's parameter node and the CLI's options."""

    model: Path | str | LoadedModel | None = None  # a model version folder; None = the default model
    device: str = "auto"
    n4: bool = True
    roi: RoiBox | None = None
    tta: bool = False
    uncertainty: bool = False


@dataclass
class SegmentationResult:
    labelmap: sitk.Image  # uint8 in the input geometry: 0 background, 1 femur, 2 tibia, 3 fibula
    uncertainty: sitk.Image | None
    model: "object"  # ModelCard
    device: str
    joint_center_lps: tuple[float, float, float]
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def resolve_model(model: Path | str | LoadedModel | None) -> LoadedModel:
    if isinstance(model, LoadedModel):
        return model
    return load_model(default_model().path if model is None else Path(model))


def _round_up(n: float, divisor: int) -> int:
    return int(np.ceil(n / divisor) * divisor)


def roi_grid(roi: RoiBox, spacing: tuple[float, float, float], divisor: int) -> sitk.Image:
    """A model grid covering ``roi`` exactly (rounded up to whole network blocks)."""
    size = [max(divisor, _round_up(s / sp, divisor)) for s, sp in zip(roi.size_mm, spacing)]
    return model_grid_around(roi.center_lps, spacing, size)


def joint_center(labels: np.ndarray, grid: sitk.Image) -> tuple[np.ndarray | None, str | None]:
    """Centre (LPS) of the femur voxels near the tibia on ``grid``; falls back to the bones' centroid."""
    femur, tibia = labels == FEMUR.label, labels == TIBIA.label
    if femur.any() and tibia.any():
        tib = sitk.GetImageFromArray(tibia.astype(np.uint8))
        tib.CopyInformation(grid)
        dist = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(tib, insideIsPositive=False, squaredDistance=False,
                                                                  useImageSpacing=True))
        contact = femur & (dist <= JOINT_DISTANCE_MM)
        pts = np.argwhere(contact if contact.any() else (femur | tibia))
    elif femur.any() or tibia.any():
        pts = np.argwhere(femur | tibia)
    else:
        return None, "no bone found in the overview pass; segmenting around the image centre"
    zyx = pts.mean(axis=0)
    return np.array(grid.TransformContinuousIndexToPhysicalPoint(zyx[::-1].tolist())), None


def _timed(timings: dict[str, float], name: str, fn: Callable, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0
    return out


def run_segmentation(
    image: sitk.Image,
    settings: SegmentationSettings | None = None,
    progress: Progress = no_progress,
    cancel: CancelToken | None = None,
) -> SegmentationResult:
    """Segments Femur, Tibia and Fibula in ``image`` (any orientation and spacing). See module docstring."""
    settings = settings or SegmentationSettings()
    cancel = cancel or CancelToken()
    stages = StageProgress(progress, STAGES)
    timings: dict[str, float] = {}
    validate_image(image)
    image = sitk.Cast(image, sitk.sitkFloat32)
    model = _timed(timings, "load model", resolve_model, settings.model)
    device, warnings = choose_device(settings.device)
    pre = model.card.preprocessing
    spacing, patch, norm = pre.spacing_mm, pre.patch_size, pre.normalization
    cancel.check()

    report = stages.stage("N4 bias correction")
    if settings.n4:
        image = _timed(timings, "n4", n4_correct, image, cancel=cancel, progress=report)
    cancel.check()

    def segment_on(grid: sitk.Image, report: Callable[[float], None], window=patch) -> np.ndarray:
        nonlocal device
        x = prepare_input(image, grid, norm)
        prob, device, warn = predict_probabilities(model.network, x, window, device, settings.tta, report, cancel)
        warnings.extend(warn)
        return prob

    report = stages.stage("Locating the knee")
    window = patch
    if settings.roi is not None:
        grid = roi_grid(settings.roi, spacing, model.card.network.size_divisor)
        center = np.asarray(settings.roi.center_lps, float)
    else:
        single = single_window_grid(image, spacing[0], patch, model.card.network.size_divisor)
        if single is not None:
            grid, center = single, image_center(image)  # the whole image fits one (enlarged) window
            window = single.GetSize()[::-1]
        else:
            overview = grid_covering(image, spacing[0], patch)
            coarse = _timed(timings, "overview pass", segment_on, overview, report)
            center, warn = joint_center(np.argmax(coarse, axis=0), overview)
            if center is None:
                center = image_center(image)
                warnings.append(warn)
            grid = model_grid_around(center, spacing, patch)

    prob = _timed(timings, "network", segment_on, grid, stages.stage("Segmenting"), window)
    cancel.check()

    report = stages.stage("Post-processing")
    labels = _timed(timings, "resample back", probabilities_to_labels, prob, grid, image)
    report(0.5)
    labels = _timed(timings, "clean up", clean_labels, labels, image.GetSpacing())
    labelmap = sitk.GetImageFromArray(labels)
    labelmap.CopyInformation(image)
    uncertainty = None
    if settings.uncertainty:
        ent, box = resample_channels(entropy(prob)[None], grid, image, np.zeros(1, np.float32))
        arr = np.zeros(labels.shape, np.float32)
        if ent is not None:
            lo, hi = box
            arr[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]] = ent[0]
        uncertainty = sitk.GetImageFromArray(arr)
        uncertainty.CopyInformation(image)
    report(1.0)
    if not labels.any():
        warnings.append("no bone was found; is this a knee MRI? (check the ROI and the echo)")
    return SegmentationResult(labelmap, uncertainty, model.card, str(device), tuple(float(c) for c in center),
                              timings, warnings)
