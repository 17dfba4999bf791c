"""The module's scene-level logic (KneeSegmentationLib.scene.logic) under real MRML from slicer-core, with the tiny
phantom model: volume node in, segmentation node out; output policy; background run, poll, cancel; errors."""
from __future__ import annotations

import ctypes
import sys
import time
from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk
import vtk

import slicer
from KneeSegmentationLib.constants import BONES, MODEL_TAG
from KneeSegmentationLib.errors import Cancelled, InputError, KneeSegError, ModelError
from KneeSegmentationLib.scene.echoes import (FRAME_LABELS_ATTRIBUTE, FRAME_TAG_ATTRIBUTE, FRAME_UNITS_ATTRIBUTE, echo_count,
                                        echo_labels, image_for_echo)
from KneeSegmentationLib.models.card import format_metrics
from KneeSegmentationLib.scene.logic import (BackgroundRun, OutputNotEmpty, SegmentationLogic, roi_box_from_node,
                                             scene_node_ids, segment_names)
from KneeSegmentationLib.scene.mrml import volume_node_from_image
from KneeSegmentationLib.segment.pipeline import SegmentationSettings, run_segmentation
from KneeSegmentationLib.scene.segments import labelmap_to_segmentation, segmentation_to_labelmap, show_3d
from KneeSegmentationLib.results.statistics import result_line, segment_statistics

from phantom import phantom

CANCEL_LATENCY_LIMIT_S = 5.0  # the issue asks for 1-2 s; the limit leaves room for a machine shared 4 ways
GUI_TICK_LIMIT_S = 0.5  # the longest the calling thread may be starved while a run works


@pytest.fixture()
def knee(scene):
    image, labels = phantom(size=(64, 64, 40), spacing=(1.5, 1.5, 2.5), seed=5)
    return volume_node_from_image(scene, image, "knee"), labels


@pytest.fixture()
def logic(scene, tiny_model_root):
    return SegmentationLogic(scene, [tiny_model_root])


def _settings(tiny_model, **kw) -> SegmentationSettings:
    return SegmentationSettings(model=tiny_model, device="cpu", n4=kw.pop("n4", False), **kw)


def test_run_gives_a_segmentation_node_with_the_three_bones(scene, logic, knee, tiny_model):
    """The logic composes the pipeline: the node holds exactly what ``run_segmentation`` returns."""
    volume, _ = knee
    before = scene_node_ids(scene)
    seg = logic.run(volume, _settings(tiny_model))
    assert segment_names(seg) == [b.name for b in BONES]
    assert seg.GetName() == "knee bones"
    added = {scene.GetNodeByID(i).GetClassName() for i in scene_node_ids(scene) - before}
    assert added == {"vtkMRMLSegmentationNode", "vtkMRMLSegmentationDisplayNode"}
    got = sitk.GetArrayFromImage(segmentation_to_labelmap(seg, volume))
    expected = run_segmentation(image_for_echo(volume), _settings(tiny_model))
    assert np.array_equal(got, sitk.GetArrayFromImage(expected.labelmap))
    assert got.any()
    segmentation = seg.GetSegmentation()
    for bone in BONES:
        segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(bone.name))
        tag = vtk.reference("")
        assert segment.GetTag(MODEL_TAG, tag) and tag.get() == "tiny-phantom/v1"


def test_existing_segments_are_never_overwritten_silently(scene, logic, knee, tiny_model):
    volume, _ = knee
    edited = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "my edits")
    edited.CreateDefaultDisplayNodes()
    edited.GetSegmentation().AddEmptySegment("", "Femur")
    ids = scene_node_ids(scene)
    with pytest.raises(OutputNotEmpty, match="my edits"):
        logic.run(volume, _settings(tiny_model), output_node=edited)
    with pytest.raises(OutputNotEmpty):
        logic.start(volume, _settings(tiny_model), output_node=edited)
    assert scene_node_ids(scene) == ids and segment_names(edited) == ["Femur"]
    # Explicit consent replaces the segments in the same node; no new node.
    logic.run(volume, _settings(tiny_model), output_node=edited, overwrite=True)
    assert scene_node_ids(scene) == ids and segment_names(edited) == [b.name for b in BONES]
    # An empty node is filled without asking.
    empty = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty")
    empty.CreateDefaultDisplayNodes()
    assert logic.run(volume, _settings(tiny_model), output_node=empty) is empty
    assert segment_names(empty) == [b.name for b in BONES]


def test_apply_refuses_segments_added_while_the_run_worked(scene, logic, knee, tiny_model):
    volume, _ = knee
    target = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "target")
    run = logic.start(volume, _settings(tiny_model), output_node=target)
    target.GetSegmentation().AddEmptySegment("", "drawn meanwhile")
    status = run.wait(60)
    assert status.finished and status.error is None
    with pytest.raises(OutputNotEmpty):
        logic.apply(status.result, volume, target)
    assert segment_names(target) == ["drawn meanwhile"]


def test_background_run_polls_progress_and_keeps_the_caller_responsive(scene, logic, knee, tiny_model):
    volume, _ = knee
    before = scene_node_ids(scene)
    run = logic.start(volume, _settings(tiny_model, n4=True))
    fractions, stages, gaps = [], set(), []
    last = time.perf_counter()
    while True:
        status = run.poll()
        fractions.append(status.fraction)
        stages.add(status.stage)
        if status.finished:
            break
        time.sleep(0.02)  # a QTimer's tick
        now = time.perf_counter()
        gaps.append(now - last)
        last = now
    assert status.error is None and status.result is not None
    assert scene_node_ids(scene) == before, "the worker must not touch the scene"
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert stages <= {"Waiting to start", *status.stages, "Done"}  # polls see only stages the run reported...
    assert ["N4 bias correction", "Segmenting", "Post-processing"] == [  # ...which are all of them, in order
        st for st in status.stages if st in ("N4 bias correction", "Segmenting", "Post-processing")]
    assert "N4 bias correction" in stages  # N4 (seconds) is always seen by a 20 ms poll
    assert max(gaps) < GUI_TICK_LIMIT_S, f"caller starved for {max(gaps):.2f} s"
    print(f"longest gap between 20 ms ticks of the calling thread: {max(gaps):.3f} s")
    seg = logic.apply(status.result, volume)
    got = sitk.GetArrayFromImage(segmentation_to_labelmap(seg, volume))
    assert np.array_equal(got, sitk.GetArrayFromImage(status.result.labelmap))


def test_cancel_stops_quickly_and_leaves_the_scene_unchanged(scene, logic, knee, tiny_model):
    volume, _ = knee
    before = scene_node_ids(scene)
    logic.loaded_model(tiny_model)  # cached, as after a first run
    # Cancelled while the network works (tta: 8 passes, so the run is still going). Cancelling inside N4 is
    # tested in test_pipeline and test_n4.
    run = logic.start(volume, _settings(tiny_model, tta=True))
    while run.poll().stage != "Segmenting" and not run.poll().finished:
        time.sleep(0.005)
    t0 = time.perf_counter()
    run.cancel()
    status = run.wait(30)
    latency = time.perf_counter() - t0
    assert status.finished and status.cancelled and isinstance(status.error, Cancelled)
    assert status.result is None and status.stage == "Cancelled"
    assert latency < CANCEL_LATENCY_LIMIT_S, f"cancel took {latency:.2f} s"
    assert scene_node_ids(scene) == before
    print(f"cancel latency {latency:.2f} s")


def test_cancel_after_the_last_check_still_applies_nothing(knee):
    volume, _ = knee
    run = BackgroundRun(sitk.Image(8, 8, 8, sitk.sitkFloat32), SegmentationSettings(),
                        runner=lambda image, settings, progress, cancel: (run.cancel(), "a result")[1])
    status = run.start().wait(10)
    assert status.cancelled and status.result is None


@pytest.mark.parametrize("error", [ModelError("model broken"), InputError("bad image"), ZeroDivisionError("bug")])
def test_errors_surface_in_poll(error):
    def runner(image, settings, progress, cancel):
        progress(0.3, "Segmenting")
        raise error

    status = BackgroundRun(sitk.Image(8, 8, 8, sitk.sitkFloat32), SegmentationSettings(), runner).start().wait(10)
    assert status.finished and status.error is error and status.result is None
    assert status.stage == "Failed" and not status.cancelled
    assert isinstance(status.error, KneeSegError) == (not isinstance(error, ZeroDivisionError))


def test_library_errors_reach_the_caller_as_kneeseg_errors(scene, logic, knee, tmp_path):
    volume, _ = knee
    run = logic.start(volume, SegmentationSettings(model=tmp_path / "nothing" / "v1", device="cpu", n4=False))
    status = run.wait(30)
    assert isinstance(status.error, ModelError)
    flat = volume_node_from_image(scene, sitk.Image(32, 32, 32, sitk.sitkFloat32), "flat")
    with pytest.raises(InputError):
        logic.run(flat, SegmentationSettings(device="cpu"))
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "no image")
    with pytest.raises(InputError, match="holds an image"):
        logic.start(empty, SegmentationSettings())


def test_input_removed_during_the_run_is_reported(scene, logic, knee, tiny_model):
    volume, _ = knee
    status = logic.start(volume, _settings(tiny_model)).wait(60)
    scene.RemoveNode(volume)
    ids = scene_node_ids(scene)
    with pytest.raises(InputError, match="removed"):
        logic.apply(status.result, volume)
    assert scene_node_ids(scene) == ids


def test_roi_node_becomes_an_lps_box(scene):
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "roi")
    roi.SetCenter(10.0, -20.0, 30.0)  # RAS
    roi.SetSize(60.0, 70.0, 80.0)
    box = roi_box_from_node(roi)
    assert box.center_lps == pytest.approx((-10.0, 20.0, 30.0))
    assert box.size_mm == pytest.approx((60.0, 70.0, 80.0))
    unplaced = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "unplaced")
    with pytest.raises(InputError, match="not placed"):
        roi_box_from_node(unplaced)


def test_roi_restricts_the_run(scene, logic, knee, tiny_model):
    volume, _ = knee
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "roi")
    roi.SetCenter(0.0, 0.0, -20.0)  # RAS; around the tibia, below the joint
    roi.SetSize(40.0, 40.0, 24.0)
    seg = logic.run(volume, _settings(tiny_model, roi=roi_box_from_node(roi)))
    got = sitk.GetArrayFromImage(segmentation_to_labelmap(seg, volume))
    image = image_for_echo(volume)
    inside = np.zeros(got.shape, bool)
    for index in np.argwhere(got > 0):
        ras = np.array(image.TransformIndexToPhysicalPoint([int(i) for i in index[::-1]])) * (-1, -1, 1)
        inside[tuple(index)] = np.all(np.abs(ras - (0.0, 0.0, -20.0)) <= np.array([20.0, 20.0, 12.0]) + 3.0)
    assert got.any() and inside[got > 0].all(), "labels outside the ROI (3 mm tolerance for the model grid)"


def test_multi_echo_volume_picks_one_echo_without_touching_the_scene(scene, knee):
    volume, _ = knee
    base = slicer.util.arrayFromVolume(volume).astype(np.float32)
    multi = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "mese")
    multi.CopyOrientation(volume)
    slicer.util.updateVolumeFromArray(multi, np.stack([base, 2 * base, 3 * base], axis=-1))
    multi.SetAttribute(FRAME_LABELS_ATTRIBUTE, "6.3,12.6,18.9")
    multi.SetAttribute(FRAME_TAG_ATTRIBUTE, "EchoTime")
    multi.SetAttribute(FRAME_UNITS_ATTRIBUTE, "ms")
    assert echo_count(multi) == 3 and echo_count(volume) == 1
    assert echo_labels(multi)[1] == "Echo 2 (EchoTime 12.6 ms)"
    ids = scene_node_ids(scene)
    second = image_for_echo(multi, 1)
    assert scene_node_ids(scene) == ids
    assert np.allclose(sitk.GetArrayFromImage(second), 2 * base)
    reference = image_for_echo(volume)
    assert second.GetOrigin() == pytest.approx(reference.GetOrigin())
    assert second.GetDirection() == pytest.approx(reference.GetDirection())
    with pytest.raises(InputError, match="choose one"):
        image_for_echo(multi, None)
    with pytest.raises(InputError, match="echoes 1 to 3"):
        image_for_echo(multi, 3)
    with pytest.raises(InputError, match="single echo"):
        image_for_echo(volume, 2)


def test_model_choices_show_versions_and_metrics(logic, tiny_model):
    choices = logic.model_choices()
    assert [c.label for c in choices] == ["tiny-phantom v1"] and choices[0].path == tiny_model
    assert choices[0].summary == "Tiny phantom v1 — Femur, Tibia, Fibula; no held-out validation recorded"
    assert choices[0].is_default and choices[0].user_summary == "bundled"
    assert logic.default_model_path() == tiny_model
    assert format_metrics({"dice": {"Femur": 0.951, "Tibia": 0.94}, "hd95_mm": 12.34}) == \
        "dice Femur 0.951, dice Tibia 0.940, hd95_mm 12.3"
    assert format_metrics({}) == "no validation metrics"
    evaluation = {"rendered": {"t2_left": {"Femur": {"dice": 0.9076, "hd95_mm": 22.0}, "Tibia": {"dice": 0.91}},
                               "dess": {"Fibula": {"dice": 0.6077}}}, "evaluation": {"seed": 7}}
    assert format_metrics(evaluation) == "Dice t2_left: Femur 0.908, Tibia 0.910; dess: Fibula 0.608"
    bench = {"benchmark": {"n_cases": 21, "bones": {"Femur": {"dice_mean": 0.9312}, "Patella": {"dice_mean": 0.8}}},
             **evaluation}  # the fixed benchmark is what versions are compared by: it comes first
    assert format_metrics(bench) == "benchmark (21 held-out cases) Dice Femur 0.931, Patella 0.800"
    assert "CPU" in SegmentationLogic.describe_devices()
    assert logic.loaded_model(tiny_model) is logic.loaded_model(str(tiny_model))  # loaded once


GIL_HOLDING_TICK_S = 0.05  # the module's POLL_INTERVAL_MS
GIL_YIELD_S = 0.015  # the module's GIL_YIELD_S
GIL_SLOWDOWN_LIMIT = 4.0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="emulation uses libc usleep through ctypes")
def test_background_run_progresses_when_the_main_thread_holds_the_gil(scene, logic, knee, tiny_model):
    """Slicer's main thread holds the GIL in Qt's event loop. Emulated here: a C sleep called through
    ``ctypes.PyDLL`` keeps the GIL, and only ``poll(wait_s=...)`` releases it, as the module's timer does.
    The run must still finish, at most a few times slower than with a free main thread."""
    volume, _ = knee
    libc = ctypes.PyDLL(None)  # PyDLL: the GIL stays held during the call
    settings = _settings(tiny_model, n4=True, tta=True)
    logic.loaded_model(tiny_model)

    def timed(hold_gil: bool, limit_s: float = 120.0) -> float:
        run = logic.start(volume, settings)
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < limit_s:
            if hold_gil:
                libc.usleep(int((GIL_HOLDING_TICK_S - GIL_YIELD_S) * 1e6))  # the "event loop"
                status = run.poll(wait_s=GIL_YIELD_S)
            else:
                status = run.poll(wait_s=GIL_HOLDING_TICK_S)
            if status.finished:
                assert status.error is None, status.error
                return time.perf_counter() - t0
        run.cancel()
        run.wait(30)
        raise AssertionError(f"the run did not finish in {limit_s} s")

    free = timed(False)
    held = timed(True, limit_s=GIL_SLOWDOWN_LIMIT * free + 1.0)
    print(f"background run: {free:.1f} s with a free main thread, {held:.1f} s with a GIL-holding one")


def test_multi_echo_sequence_picks_one_echo_without_touching_the_scene(scene, knee):
    """A multi-echo series loaded as a Sequence: the selected volume is the browser's proxy; every echo is
    offered and the chosen one is read from the sequence."""
    volume, _ = knee
    sequences = slicer.vtkSlicerSequencesLogic()  # registers the sequence node classes, as Slicer does
    sequences.SetMRMLScene(scene)
    base = slicer.util.arrayFromVolume(volume).astype(np.float32)
    sequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "mese")
    sequence.SetIndexName("EchoTime")
    sequence.SetIndexUnit("ms")
    for factor, te in ((1, "6.3"), (2, "12.6"), (3, "18.9")):
        echo = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", f"echo {te}")
        echo.CopyOrientation(volume)
        slicer.util.updateVolumeFromArray(echo, factor * base)
        sequence.SetDataNodeAtValue(echo, te)
        scene.RemoveNode(echo)
    browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", "browser")
    browser.SetAndObserveMasterSequenceNodeID(sequence.GetID())
    sequences.UpdateProxyNodesFromSequences(browser)
    proxy = browser.GetProxyNode(sequence)
    assert echo_count(proxy) == 3 and echo_labels(proxy)[2] == "Echo 3 (EchoTime 18.9 ms)"
    assert echo_labels(volume) == []
    ids = scene_node_ids(scene)
    third = image_for_echo(proxy, 2)
    assert scene_node_ids(scene) == ids
    assert np.allclose(sitk.GetArrayFromImage(third), 3 * base)
    assert third.GetOrigin() == pytest.approx(image_for_echo(volume).GetOrigin())


def test_show_3d_builds_and_hides_the_surfaces(scene, knee):
    """The panel's "Show 3D" toggle: on, the closed surfaces exist and show in 3D; off, they are hidden (and
    dropped, so editing stays fast); on again rebuilds them."""
    volume, labels = knee
    seg = labelmap_to_segmentation(scene, labels, volume, name="knee bones")
    segmentation = seg.GetSegmentation()
    closed_surface = slicer.vtkSegmentationConverter.GetSegmentationClosedSurfaceRepresentationName()
    show_3d(seg, True)
    assert segmentation.ContainsRepresentation(closed_surface) and seg.GetDisplayNode().GetVisibility3D()
    femur = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName("Femur"))
    assert femur.GetRepresentation(closed_surface).GetNumberOfPoints() > 0
    show_3d(seg, False)
    assert not seg.GetDisplayNode().GetVisibility3D()
    assert not segmentation.ContainsRepresentation(closed_surface)
    assert seg.GetDisplayNode().GetVisibility2D()  # the slice views keep showing the segments
    show_3d(seg, True)
    assert segmentation.ContainsRepresentation(closed_surface) and seg.GetDisplayNode().GetVisibility3D()


def test_result_line_gives_the_volumes_the_side_and_what_was_not_found(knee, tiny_model):
    """The panel's status line and ``kneeseg segment`` print the same ``statistics.result_line``."""
    volume, _ = knee
    result = run_segmentation(image_for_echo(volume), _settings(tiny_model))
    stats = {s["segment"]: s["volume_ml"] for s in segment_statistics(None, result.labelmap)["segments"]}
    line = result_line(result)
    assert line.startswith(f"Femur {stats['Femur']:.1f} ml, Tibia {stats['Tibia']:.1f} ml")
    # the tiny model has no Patella output: it never looked for one, so the Patella is not "not found"
    assert result.not_segmented == ["Patella"] and "Patella" not in result.not_found
    assert line.endswith("; not segmented by this model: Patella")
    if result.not_found:
        assert "; not found: " + ", ".join(result.not_found) + ";" in line
    nothing = replace(result, not_found=[b.name for b in BONES], not_segmented=[], laterality=None)
    assert result_line(nothing) == "no bone found; side unknown; not found: Femur, Tibia, Fibula, Patella"
