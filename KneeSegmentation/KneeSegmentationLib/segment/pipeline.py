"""The whole segmentation, image in, labelmap out: validate → N4 → locate the knee → segment → clean up.

``run_segmentation`` touches no MRML and no GUI, so the Slicer module can run it in a worker thread, the CLI
in the main thread and the trainer in its evaluation loop: all three get exactly the same result.

The whole image is segmented at the model's spacing: in one pass on an enlarged window when it fits
(``preprocess.SINGLE_PASS_GROWTH``; the network is fully convolutional), else in overlapping tiles of the
model's window blended with Gaussian weights. No overview pass decides where to look, so a tall image's
shafts are segmented like its joint. The femorotibial joint centre is reported from the result.
The model (and, on a process's first run, torch) loads in a thread while N4 runs (``_n4_beside``).
"""
from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import SimpleITK as sitk

from .io import validate_image
from .laterality import drop_specks, laterality_of
from .n4 import n4_correct
from .postprocess import clean_labels, probabilities_to_labels, resample_channels
from .preprocess import RoiBox, image_center, joint_center, model_grid_around, prepare_input, whole_image_grid
from ..errors import Cancelled
from ..progress import CancelToken, LinkedToken, Progress, StageProgress, no_progress

if TYPE_CHECKING:
    from ..models.store import LoadedModel

STAGES = {"N4 bias correction": 25, "Segmenting": 60, "Post-processing": 15}


@dataclass
class SegmentationSettings:
    """What a run should do; the same object backs the module's parameter node and the CLI's options."""

    model: Path | str | LoadedModel | None = None  # a model version folder; None = the default model
    device: str = "auto"
    n4: bool = True
    roi: RoiBox | None = None
    # Average with the left-right mirrored prediction. None: when the model was trained on mirrored knees
    # (``ModelCard.mirror_trained``, every released model): on the benchmark it lifts every bone's mean and
    # worst Dice and the echo consistency, for one more network pass (0.3-0.6 s on the sample).
    tta: bool | None = None
    uncertainty: bool = False
    keep_probabilities: bool = False  # return the model-grid probabilities too (calibration, research)

    def mirrored_for(self, card) -> bool:
        """Whether a run of the model of ``card`` averages with the mirrored prediction (``tta``; None: the
        model's choice)."""
        return card.mirror_trained if self.tta is None else self.tta


@dataclass
class SegmentationResult:
    labelmap: sitk.Image  # uint8 in the input geometry: 0 background, then the label of each bone (constants)
    uncertainty: sitk.Image | None
    model: "object"  # ModelCard
    device: str
    joint_center_lps: tuple[float, float, float]
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    laterality: str | None = None  # "left" / "right" knee, from the fibula's side of the tibia (segment/laterality.py)
    not_found: list[str] = field(default_factory=list)  # bone names absent or below laterality.MIN_BONE_ML
    # bones the model has no output for (a 3-bone model and the Patella): not "not found", never looked for
    not_segmented: list[str] = field(default_factory=list)
    probabilities: tuple[np.ndarray, sitk.Image] | None = None  # (C, z, y, x) on the model grid, when asked for


def resolve_model(model: Path | str | LoadedModel | None) -> LoadedModel:
    from ..models.registry import default_model
    from ..models.store import LoadedModel, load_model  # torch: imported when a model is needed

    if isinstance(model, LoadedModel):
        return model
    return load_model(default_model().path if model is None else Path(model))


def _load(settings: SegmentationSettings) -> tuple[LoadedModel, object, list[str]]:
    """The model and the device it runs on (with the warnings of that choice)."""
    from .infer import choose_device  # torch

    model = resolve_model(settings.model)
    device, warnings = choose_device(settings.device)
    return model, device, list(warnings)


def _in_background(fn: Callable, *args) -> Future:
    """``fn(*args)`` in a thread of its own; the thread ends with it."""
    pool = ThreadPoolExecutor(1, thread_name_prefix="kneeseg-load")
    future = pool.submit(fn, *args)
    pool.shutdown(wait=False)
    return future


def _n4_beside(image: sitk.Image, loading: Future, cancel: CancelToken, report: Callable[[float], None],
               timings: dict[str, float]) -> sitk.Image:
    """N4 while the model loads in ``loading``. The first run in a process imports torch and loads the model
    (1-2 s, mostly one core), N4 needs only SimpleITK, whose C++ threads release the GIL and do not quite use
    both cores; so side by side they cost little more than N4 alone. A model that fails to load stops N4 at
    once, and its error, not a cancel, is what the caller sees."""
    n4_cancel = LinkedToken(cancel)
    loading.add_done_callback(lambda done: done.exception() is not None and n4_cancel.cancel())
    try:
        return _timed(timings, "n4", n4_correct, image, cancel=n4_cancel, progress=report)
    except Cancelled:
        if not cancel.cancelled and loading.exception() is not None:
            loading.result()  # raises the loading error
        raise


def _round_up(n: float, divisor: int) -> int:
    return int(np.ceil(n / divisor) * divisor)


def roi_grid(roi: RoiBox, spacing: tuple[float, float, float], divisor: int) -> sitk.Image:
    """A model grid covering ``roi`` exactly (rounded up to whole network blocks)."""
    size = [max(divisor, _round_up(min(s / sp, 1e9), divisor)) for s, sp in zip(roi.size_mm, spacing)]
    return model_grid_around(roi.center_lps, spacing, size)


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
    """Segments Femur, Tibia, Fibula and Patella in ``image`` (any orientation and spacing). See module docstring."""
    settings = settings or SegmentationSettings()
    cancel = cancel or CancelToken()
    stages = StageProgress(progress, STAGES)
    timings: dict[str, float] = {}
    validate_image(image)
    image = sitk.Cast(image, sitk.sitkFloat32)
    loading = _in_background(_timed, timings, "load model (beside N4)" if settings.n4 else "load model", _load,
                             settings)
    report = stages.stage("N4 bias correction")
    if settings.n4:
        image = _n4_beside(image, loading, cancel, report, timings)
    model, device, warnings = loading.result()
    pre = model.card.preprocessing
    spacing, patch, norm = pre.spacing_mm, pre.patch_size, pre.normalization
    cancel.check()

    if settings.roi is not None:
        grid, window = roi_grid(settings.roi, spacing, model.card.network.size_divisor), patch
    else:
        grid, window = whole_image_grid(image, spacing, patch, model.card.network.size_divisor)
    from .infer import entropy, predict_probabilities

    mirror = settings.mirrored_for(model.card)
    if settings.tta and not model.card.mirror_trained:
        warnings.append(f"{model.card.tag} was not trained on mirrored knees: its mirrored pass may be worse")
    report = stages.stage("Segmenting")
    prob, device, warn = _timed(timings, "network", lambda: predict_probabilities(  # input resampling included
        model.network, prepare_input(image, grid, norm), window, device, mirror, report, cancel,
        model.card.plan.logit_offsets))
    warnings.extend(warn)
    cancel.check()
    if settings.roi is not None:
        center = np.asarray(settings.roi.center_lps, float)
    else:
        center, _ = joint_center(np.argmax(prob, axis=0), grid)
        center = image_center(image) if center is None else center

    report = stages.stage("Post-processing")
    labels, not_found = labels_from_probabilities(prob, grid, image, timings, report)
    not_segmented = [name for name in not_found if name not in model.card.labels.values()]
    not_found = [name for name in not_found if name not in not_segmented]
    labelmap = sitk.GetImageFromArray(labels)
    labelmap.CopyInformation(image)
    side = laterality_of(labelmap)
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
                              timings, warnings, side, not_found, not_segmented,
                              (prob, grid) if settings.keep_probabilities else None)


def labels_from_probabilities(prob: np.ndarray, grid: sitk.Image, image: sitk.Image,
                              timings: dict[str, float] | None = None,
                              report: Callable[[float], None] = lambda f: None) -> tuple[np.ndarray, list[str]]:
    """The labelmap on ``image``'s grid from probabilities on the model ``grid``: argmax after resampling, clean
    up (islands, holes, fibula evidence), specks dropped; and the bones left with nothing (``drop_specks``)."""
    timings = {} if timings is None else timings
    labels = _timed(timings, "resample back", probabilities_to_labels, prob, grid, image)
    report(0.5)
    labels = _timed(timings, "clean up", clean_labels, labels, image.GetSpacing(), image.GetDirection())
    return drop_specks(labels, image.GetSpacing())
