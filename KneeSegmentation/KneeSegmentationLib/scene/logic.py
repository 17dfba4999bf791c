"""Scene-level logic of the Slicer module: a volume node in, a Femur/Tibia/Fibula/Patella segmentation node out.

No Qt here, so everything below the panel runs (and is tested) under ``slicer-core`` with a real MRML scene.
The module's ``KneeSegmentationLogic`` holds a ``SegmentationLogic(slicer.mrmlScene)``; tests hold one built on
``mrml.create_scene()``. This file composes the library (``pipeline.run_segmentation``,
``mrml.image_from_volume_node``, ``segments.labelmap_to_segmentation``) and adds only what a scene needs:
the echo of a multi-echo series (read through ``echoes``), the ROI from a markups
node, the output-node policy, and a background run.

Background run: a **thread**, not a process. A thread shares the image and the cached model without copies or
temporary files and needs no second Python environment (a process would need ``PythonSlicer`` with torch and
the library on its path, the image written to disk and read back, and the model loaded again for every run).
``run_segmentation`` spends its time in torch and SimpleITK calls, which release the GIL, so the calling
thread keeps running (``test_logic.py`` measures its longest stall). Inside Slicer the main thread holds the
GIL while Qt's event loop runs, so the module's poll timer yields it for part of each tick
(``poll(wait_s=...)``, as SimpleITK's SlicerSimpleFilters does with a sleep); the heavy C++ work overlaps
with the event loop and only the worker's Python glue waits for those windows (``test_logic.py`` emulates
such a main thread). The price of a thread is that it cannot be killed: Cancel is cooperative. The pipeline
checks its ``CancelToken`` between stages, N4 iterations and sliding windows (about a second each on a CPU),
so a cancel lands within a second or two. MRML is never touched from the worker: the image is read from the
node on the calling (GUI) thread before the start, and ``apply`` creates or fills the segmentation node on
the calling thread after the run, so a cancelled or failed run leaves the scene exactly as it was. The GUI
thread polls ``BackgroundRun.poll()`` from a QTimer.

Output policy: a segmentation node that already holds segments is never replaced silently. ``start``/``run``/
``apply`` raise ``OutputNotEmpty`` unless ``overwrite=True``; with no output node a new one is created.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import SimpleITK as sitk

from ..constants import MODEL_TAG
from .echoes import image_for_echo
from ..errors import Cancelled, InputError, KneeSegError
from ..segment.infer import available_devices
from ..models.registry import default_model
from ..models.store import LoadedModel, load_model
from .choices import ModelChoice, model_choices
from .mrml import volume_node_from_image
from ..segment.pipeline import SegmentationResult, SegmentationSettings, run_segmentation
from ..segment.preprocess import RoiBox
from ..progress import CancelToken, Progress, no_progress

log = logging.getLogger(__name__)

OUTPUT_NAME_SUFFIX = " bones"
UNCERTAINTY_NAME_SUFFIX = " bone uncertainty"
DEVICE_LABELS = {"cuda": "GPU (CUDA)", "mps": "GPU (Apple MPS)", "cpu": "CPU"}

Runner = Callable[[sitk.Image, SegmentationSettings, Progress, CancelToken], SegmentationResult]


class OutputNotEmpty(InputError):
    """The chosen output segmentation already holds segments; pass ``overwrite=True`` or choose a new node."""


# ---------------------------------------------------------------------------------------------------- inputs
def roi_box_from_node(roi_node) -> RoiBox:
    """The axis-aligned LPS box enclosing a markups ROI (rotated ROIs and parent transforms included)."""
    bounds = [0.0] * 6
    roi_node.GetRASBounds(bounds)
    lo = np.array(bounds[0::2])
    hi = np.array(bounds[1::2])
    if not (np.all(np.isfinite(lo)) and np.all(hi > lo)):
        raise InputError(f"ROI '{roi_node.GetName()}' is not placed or has no size; place it around the knee "
                         "or clear the ROI selection for automatic placement")
    center_ras = (lo + hi) / 2
    center_lps = (-center_ras[0], -center_ras[1], center_ras[2])
    return RoiBox(tuple(float(c) for c in center_lps), tuple(float(s) for s in hi - lo))


# ---------------------------------------------------------------------------------------------------- outputs
def segment_names(segmentation_node) -> list[str]:
    segmentation = segmentation_node.GetSegmentation()
    return [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]


def describe_output(segmentation_node) -> str:
    """What replacing this node's segments would destroy, for the confirmation question."""
    names = segment_names(segmentation_node)
    segmentation = segmentation_node.GetSegmentation()
    ours = [segmentation.GetNthSegment(i).HasTag(MODEL_TAG) for i in range(len(names))]
    origin = "from an earlier KneeSegmentation run, possibly edited since" if names and all(ours) \
        else "that were not all created by KneeSegmentation"
    shown = ", ".join(names[:6]) + (", …" if len(names) > 6 else "")
    return f"Segmentation '{segmentation_node.GetName()}' holds {len(names)} segment(s) {origin}: {shown}."


def check_output(segmentation_node, overwrite: bool) -> None:
    """Raises ``OutputNotEmpty`` if ``segmentation_node`` holds segments and ``overwrite`` is not set."""
    if segmentation_node is None or overwrite:
        return
    if segmentation_node.GetSegmentation().GetNumberOfSegments() > 0:
        raise OutputNotEmpty(describe_output(segmentation_node) + " Its segments would be replaced; confirm "
                             "the overwrite or choose 'Create new segmentation' as output.")


def scene_node_ids(scene) -> set[str]:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def remove_nodes_added_since(scene, before: set[str]) -> None:
    for node_id in scene_node_ids(scene) - before:
        node = scene.GetNodeByID(node_id)
        if node is not None:
            scene.RemoveNode(node)


# ------------------------------------------------------------------------------------------- background run
@dataclass(frozen=True)
class RunStatus:
    fraction: float
    stage: str
    finished: bool
    error: BaseException | None
    result: SegmentationResult | None
    elapsed_s: float
    stages: tuple[str, ...] = ()  # every stage reported so far, in order (a fast one may pass between two polls)

    @property
    def cancelled(self) -> bool:
        return isinstance(self.error, Cancelled)


class BackgroundRun:
    """``run_segmentation`` in a worker thread; see the module docstring for why a thread.

    >>> run = BackgroundRun(image, settings); run.start()
    >>> status = run.poll()          # from a QTimer on the GUI thread: fraction, stage, finished, error, result
    >>> run.cancel()                 # returns at once; the worker stops at its next check (≤ ~1-2 s)
    """

    def __init__(self, image: sitk.Image, settings: SegmentationSettings, runner: Runner | None = None) -> None:
        self._image = image
        self._settings = settings
        self._runner = runner or run_segmentation
        self._token = CancelToken()
        self._lock = threading.Lock()
        self._fraction, self._stage = 0.0, "Waiting to start"
        self._stages: list[str] = []
        self._result: SegmentationResult | None = None
        self._error: BaseException | None = None
        self._done = threading.Event()
        self._started_at: float | None = None
        self._ended_at: float | None = None
        self._thread = threading.Thread(target=self._work, name="KneeSegmentation", daemon=True)

    def start(self) -> "BackgroundRun":
        self._started_at = time.perf_counter()
        self._thread.start()
        return self

    def cancel(self) -> None:
        self._token.cancel()
        with self._lock:
            if not self._done.is_set():
                self._stage = "Cancelling…"

    def poll(self, wait_s: float = 0.0) -> RunStatus:
        """The run's state. ``wait_s`` > 0 first waits that long (less if the run ends) with the GIL released:
        inside Slicer, whose main thread holds the GIL in Qt's event loop, that is when the worker runs."""
        if wait_s > 0:
            self._done.wait(wait_s)
        with self._lock:
            end = self._ended_at or time.perf_counter()
            return RunStatus(self._fraction, self._stage, self._done.is_set(), self._error, self._result,
                             end - (self._started_at or end), tuple(self._stages))

    def wait(self, timeout: float | None = None) -> RunStatus:
        """Blocks until the run ends (for scripts and tests; the GUI polls instead)."""
        self._done.wait(timeout)
        return self.poll()

    def _report(self, fraction: float, stage: str) -> None:
        with self._lock:
            if not self._token.cancelled:
                self._fraction, self._stage = float(fraction), stage
                if not self._stages or self._stages[-1] != stage:
                    self._stages.append(stage)

    def _work(self) -> None:
        result, error = None, None
        try:
            result = self._runner(self._image, self._settings, self._report, self._token)
            self._token.check()  # a cancel that arrived after the last check still wins: nothing is applied
        except KneeSegError as e:
            result, error = None, e
        except Exception as e:  # noqa: BLE001 - reported to the GUI thread, which shows it; never lost
            log.exception("KneeSegmentation: unexpected error in the background run")
            result, error = None, e
        with self._lock:
            self._result, self._error = result, error
            self._fraction = 1.0 if error is None else self._fraction
            self._stage = "Done" if error is None else ("Cancelled" if isinstance(error, Cancelled) else "Failed")
            self._ended_at = time.perf_counter()
            self._done.set()


# ---------------------------------------------------------------------------------------------------- logic
class SegmentationLogic:
    """Runs the knee segmentation on volume nodes of one MRML scene.

    >>> logic = SegmentationLogic(slicer.mrmlScene)
    >>> seg = logic.run(volume_node, SegmentationSettings(device="cpu"))          # synchronous
    >>> run = logic.start(volume_node, settings)                                   # background
    >>> ... status = run.poll() ... ; seg = logic.apply(status.result, volume_node)  # on the GUI thread
    """

    def __init__(self, scene, model_roots: Iterable[Path] | None = None, models_root: Path | str | None = None) -> None:
        self.scene = scene
        self.model_roots = list(model_roots) if model_roots is not None else None
        self.models_root = Path(models_root) if models_root is not None else None  # user metrics; None: the user's
        self._models: dict[Path, LoadedModel] = {}
        self._models_lock = threading.Lock()

    # -- choices for the panel
    def model_choices(self) -> list[ModelChoice]:
        """The picker's records (``choices.model_choices``), the default marked as ``default_model_path``."""
        return model_choices(self.model_roots, self.models_root)

    def default_model_path(self) -> Path:
        return default_model(self.model_roots).path

    @staticmethod
    def devices_found() -> list[str]:
        """Torch devices available here, best first (``cpu`` always last)."""
        return available_devices()

    @staticmethod
    def describe_devices() -> str:
        found = available_devices()
        return "Found: " + ", ".join(DEVICE_LABELS.get(d, d) for d in found)

    # -- models are loaded once per path and shared by runs (read-only during inference)
    def loaded_model(self, model: Path | str | LoadedModel | None) -> LoadedModel:
        if isinstance(model, LoadedModel):
            return model
        path = Path(model) if model is not None else self.default_model_path()
        key = path.resolve()
        with self._models_lock:
            if key not in self._models:
                self._models[key] = load_model(path)
            return self._models[key]

    def forget_models(self) -> None:
        with self._models_lock:
            self._models.clear()

    def _runner(self, image, settings, progress, cancel) -> SegmentationResult:
        settings = replace(settings, model=self.loaded_model(settings.model))
        return run_segmentation(image, settings, progress, cancel)

    # -- running
    def start(self, volume_node, settings: SegmentationSettings, echo: int | None = None, output_node=None,
              overwrite: bool = False) -> BackgroundRun:
        """Checks the inputs and the output policy, reads the image (this thread), starts the worker."""
        check_output(output_node, overwrite)
        image = image_for_echo(volume_node, echo)
        return BackgroundRun(image, settings, self._runner).start()

    def apply(self, result: SegmentationResult, volume_node, output_node=None, overwrite: bool = False,
              add_uncertainty: bool = True):
        """Puts ``result`` into the scene (call on the GUI thread): fills ``output_node`` or a new node."""
        if volume_node is None or not self.scene.IsNodePresent(volume_node):
            raise InputError("the input volume was removed from the scene while the segmentation was running")
        if output_node is not None and not self.scene.IsNodePresent(output_node):
            raise InputError("the output segmentation was removed from the scene while the segmentation was running")
        check_output(output_node, overwrite)  # again: the user may have added segments while it ran
        from .segments import labelmap_to_segmentation  # noqa: PLC0415 - needs slicer's segmentation classes

        before = scene_node_ids(self.scene)
        try:
            node = labelmap_to_segmentation(self.scene, result.labelmap, volume_node,
                                            name=volume_node.GetName() + OUTPUT_NAME_SUFFIX,
                                            segmentation_node=output_node, model_tag=result.model.tag,
                                            laterality=result.laterality)
        except Exception:
            remove_nodes_added_since(self.scene, before)  # a failed apply leaves no half-made node behind
            raise
        if add_uncertainty and result.uncertainty is not None:
            volume_node_from_image(self.scene, result.uncertainty, volume_node.GetName() + UNCERTAINTY_NAME_SUFFIX)
        return node

    def run(self, volume_node, settings: SegmentationSettings | None = None, progress: Progress = no_progress,
            cancel: CancelToken | None = None, output_node=None, overwrite: bool = False, echo: int | None = None):
        """Synchronous: segments ``volume_node`` and returns the segmentation node (for scripts and tests)."""
        settings = settings or SegmentationSettings()
        check_output(output_node, overwrite)
        image = image_for_echo(volume_node, echo)
        result = self._runner(image, settings, progress, cancel or CancelToken())
        if cancel is not None:
            cancel.check()
        return self.apply(result, volume_node, output_node, overwrite)
