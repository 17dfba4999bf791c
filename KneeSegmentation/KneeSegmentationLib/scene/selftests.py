"""Test bodies shared by the Slicer self-test and pytest: one set of checks, two runners.

Each function takes what it needs (a scene, a volume node, a model) and asserts with plain ``assert``. The
module's ``KneeSegmentationTest`` calls them with ``slicer.mrmlScene``, the real sample and the bundled model;
``Testing/Python/test_selftests.py`` calls them with a headless scene from ``mrml.create_scene()``, a phantom
and the tiny test model. No Qt here.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..constants import BONES, CATEGORY_CODE, SNOMED_SCHEME
from ..segment.io import read_image
from .logic import OutputNotEmpty, SegmentationLogic, scene_node_ids, segment_names
from .mrml import volume_node_from_image
from ..segment.pipeline import SegmentationSettings
from .segments import load_segmentation, save_segmentation, segmentation_to_labelmap

CANCEL_TIMEOUT_S = 30.0
TERMINOLOGY_TAG = "TerminologyEntry"


@dataclass(frozen=True)
class Plausible:
    """Range of each bone's volume (ml) that a correct result on a given image must fall in."""

    ml: dict[str, tuple[float, float]]


# The real MESE sample: 160 x 160 x 96 mm sagittal field of view around the joint; it holds the distal femur,
# the proximal tibia, the fibular head and the patella. Wide bounds (femur and tibia as in test_bundled_model.py):
# they catch an empty, exploded or swapped result. The bundled model (knee-bones v12, mirrored pass) finds the
# fibular head (3.0-5.0 ml with N4) and a patella of 27-28 ml (a little too large; MODEL_CARD.md); without N4 the head may be missed, so
# the Fibula bound only catches an exploded fibula.
REAL_SAMPLE = Plausible({"Femur": (30.0, 700.0), "Tibia": (20.0, 500.0), "Fibula": (0.0, 40.0),
                         "Patella": (5.0, 80.0)})


@dataclass
class Report:
    """What the self-test measured, for the log."""

    volumes_ml: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def __str__(self) -> str:
        vols = ", ".join(f"{k} {v:.1f} ml" for k, v in self.volumes_ml.items())
        secs = ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items())
        return f"volumes: {vols}; times: {secs}"


def load_sample(scene, path: Path | str, name: str = "KneeMESE"):
    """Loads an image file as a volume node (the same reader as the CLI)."""
    return volume_node_from_image(scene, read_image(path), name)


def bone_volumes_ml(segmentation_node, volume_node) -> dict[str, float]:
    # A copy, not GetArrayViewFromImage: a view of this temporary image would dangle once the image is freed.
    labels = sitk.GetArrayFromImage(segmentation_to_labelmap(segmentation_node, volume_node))
    voxel_ml = float(np.prod(volume_node.GetSpacing())) / 1000.0
    return {bone.name: float((labels == bone.label).sum()) * voxel_ml for bone in BONES}


def check_segmentation(logic: SegmentationLogic, volume_node, settings: SegmentationSettings,
                       plausible: Plausible, report: Report | None = None):
    """Runs the pipeline through the logic; three named, coloured, SNOMED-tagged, non-empty bones of
    plausible volume. Returns the segmentation node."""
    t0 = time.perf_counter()
    seg = logic.run(volume_node, settings)
    if report is not None:
        report.seconds["segmentation"] = time.perf_counter() - t0
    assert segment_names(seg) == [b.name for b in BONES], segment_names(seg)
    segmentation = seg.GetSegmentation()
    for bone in BONES:
        segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(bone.name))
        assert np.allclose(segment.GetColor(), bone.color), f"{bone.name} colour"
        entry = _tag(segment, TERMINOLOGY_TAG)
        assert f"{SNOMED_SCHEME}^{CATEGORY_CODE}^" in entry and f"{SNOMED_SCHEME}^{bone.snomed_code}^" in entry, \
            f"{bone.name} terminology: {entry!r}"
    volumes = bone_volumes_ml(seg, volume_node)
    if report is not None:
        report.volumes_ml.update(volumes)
    for name, (low, high) in plausible.ml.items():
        assert volumes[name] > 0 or low == 0, f"{name} segment is empty"
        assert low <= volumes[name] <= high, f"{name}: {volumes[name]:.1f} ml outside [{low}, {high}] ml"
    return seg


def check_round_trip(scene, segmentation_node, volume_node, folder: Path | str) -> None:
    """Export to ``.seg.nrrd`` and import back: same voxels, names, colours and terminology."""
    path = save_segmentation(segmentation_node, Path(folder) / "knee-selftest.seg.nrrd")
    loaded = load_segmentation(scene, path, name="knee selftest reloaded")
    try:
        before = sitk.GetArrayFromImage(segmentation_to_labelmap(segmentation_node, volume_node))
        after = sitk.GetArrayFromImage(segmentation_to_labelmap(loaded, volume_node))
        assert np.array_equal(before, after), "voxels changed in the .seg.nrrd round trip"
        assert segment_names(loaded) == segment_names(segmentation_node)
        for bone in BONES:
            a = _segment(segmentation_node, bone.name)
            b = _segment(loaded, bone.name)
            assert _tag(a, TERMINOLOGY_TAG) == _tag(b, TERMINOLOGY_TAG), f"{bone.name} terminology lost"
            assert np.allclose(a.GetColor(), b.GetColor(), atol=1e-3), f"{bone.name} colour lost"
    finally:
        scene.RemoveNode(loaded)


def check_cancel_leaves_scene_unchanged(scene, logic: SegmentationLogic, volume_node,
                                        settings: SegmentationSettings, report: Report | None = None) -> None:
    """Start in the background, cancel once it works, wait: cancelled, no result, same nodes as before."""
    before_ids, before_count = scene_node_ids(scene), scene.GetNumberOfNodes()
    run = logic.start(volume_node, settings)
    deadline = time.perf_counter() + CANCEL_TIMEOUT_S
    while run.poll().fraction <= 0.0 and not run.poll().finished and time.perf_counter() < deadline:
        time.sleep(0.01)
    t0 = time.perf_counter()
    run.cancel()
    status = run.wait(CANCEL_TIMEOUT_S)
    if report is not None:
        report.seconds["cancel latency"] = time.perf_counter() - t0
    assert status.finished, "the run did not stop after cancel"
    assert status.cancelled and status.result is None, f"expected a cancelled run, got {status.error!r}"
    assert scene.GetNumberOfNodes() == before_count and scene_node_ids(scene) == before_ids


def check_no_silent_overwrite(scene, logic: SegmentationLogic, volume_node, segmentation_node,
                              settings: SegmentationSettings) -> None:
    """A segmentation that holds segments is refused as output unless overwrite is explicit."""
    before = scene_node_ids(scene)
    names = segment_names(segmentation_node)
    try:
        logic.run(volume_node, settings, output_node=segmentation_node)
    except OutputNotEmpty:
        pass
    else:
        raise AssertionError("an existing segmentation was overwritten without consent")
    assert scene_node_ids(scene) == before and segment_names(segmentation_node) == names


def run_all(scene, logic: SegmentationLogic, volume_node, settings: SegmentationSettings, plausible: Plausible,
            folder: Path | str, cancel_settings: SegmentationSettings | None = None) -> Report:
    """The whole self-test on one loaded volume; returns what it measured."""
    report = Report()
    seg = check_segmentation(logic, volume_node, settings, plausible, report)
    check_round_trip(scene, seg, volume_node, folder)
    check_no_silent_overwrite(scene, logic, volume_node, seg, settings)
    check_cancel_leaves_scene_unchanged(scene, logic, volume_node, cancel_settings or settings, report)
    return report


def _segment(segmentation_node, name: str):
    segmentation = segmentation_node.GetSegmentation()
    return segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(name))


def _tag(segment, name: str) -> str:
    import vtk  # noqa: PLC0415 - vtk.reference is how VTK's Python returns a string through an argument

    value = vtk.reference("")
    return str(value.get()) if segment.GetTag(name, value) else ""
