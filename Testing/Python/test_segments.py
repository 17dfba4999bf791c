"""Volume nodes and segmentation nodes under real MRML (slicer-core)."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from KneeSegmentationLib.constants import BONES, PATELLA
from KneeSegmentationLib.errors import InputError
from KneeSegmentationLib.scene.mrml import image_from_volume_node, volume_node_from_image
from KneeSegmentationLib.scene.segments import (labelmap_to_segmentation, load_segmentation, save_segmentation,
                                          segmentation_to_labelmap, terminology_entry)

from phantom import four_bones, phantom

OBLIQUE = sitk.VersorTransform((0.2, -0.4, 1.0), 0.6).GetMatrix()


@pytest.mark.parametrize("direction", [None, OBLIQUE, (0, 0, -1, 1, 0, 0, 0, -1, 0)])  # axial, oblique, PIR
def test_volume_node_geometry_round_trip(scene, direction):
    image, _ = phantom(size=(30, 26, 12), spacing=(0.6, 0.7, 3.5), center=(12.0, -30.0, 8.0), direction=direction)
    node = volume_node_from_image(scene, image, "knee")
    # MRML speaks RAS: the first two axes of origin and direction flip sign.
    ras_origin = np.array(node.GetOrigin())
    assert np.allclose(ras_origin, np.array(image.GetOrigin()) * [-1, -1, 1])
    back = image_from_volume_node(node)
    assert np.allclose(back.GetOrigin(), image.GetOrigin())
    assert np.allclose(back.GetSpacing(), image.GetSpacing())
    assert np.allclose(back.GetDirection(), image.GetDirection())
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))


def _labels_and_volume(scene, direction=OBLIQUE):
    """The phantom's three bones plus a Patella block in its background: all four classes."""
    image, labels = four_bones(direction)
    return labels, volume_node_from_image(scene, image, "knee")


def test_segments_have_names_colours_terminology(scene):
    labels, volume = _labels_and_volume(scene)
    nodes = scene.GetNumberOfNodes()
    seg = labelmap_to_segmentation(scene, labels, volume, model_tag="tiny/v1")
    assert scene.GetNumberOfNodes() == nodes + 2  # the segmentation node and its display node, nothing else
    segmentation = seg.GetSegmentation()
    assert [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())] == \
        ["Femur", "Tibia", "Fibula", "Patella"]
    for bone in BONES:
        segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(bone.name))
        assert np.allclose(segment.GetColor(), bone.color)
        entry = segment.GetTerminology()
        assert f"SCT^{bone.snomed_code}^{bone.name}" in entry and "SCT^123037004^Anatomical Structure" in entry
        assert entry == terminology_entry(bone)
    colours = {tuple(np.round(b.color, 3)) for b in BONES}
    assert len(colours) == len(BONES) == 4


def test_labelmap_segments_labelmap_is_exact(scene):
    labels, volume = _labels_and_volume(scene)
    seg = labelmap_to_segmentation(scene, labels, volume)
    nodes = scene.GetNumberOfNodes()
    back = segmentation_to_labelmap(seg, volume)
    assert scene.GetNumberOfNodes() == nodes  # the export leaves nothing behind in the user's scene
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(labels))
    assert np.allclose(back.GetOrigin(), labels.GetOrigin())
    assert np.allclose(back.GetDirection(), labels.GetDirection())


def test_seg_nrrd_round_trip_keeps_everything(scene, tmp_path):
    labels, volume = _labels_and_volume(scene)
    seg = labelmap_to_segmentation(scene, labels, volume)
    path = save_segmentation(seg, tmp_path / "knee.seg.nrrd")
    assert path.is_file() and not list(tmp_path.glob(".kneeseg-tmp-*"))
    loaded = load_segmentation(scene, path)
    back = segmentation_to_labelmap(loaded, volume)
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(labels))
    segmentation = loaded.GetSegmentation()
    segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName("Fibula"))
    assert "87342007" in segment.GetTerminology()
    patella = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName("Patella"))
    assert "SCT^64234005^Patella" in patella.GetTerminology()
    assert (sitk.GetArrayFromImage(back) == PATELLA.label).sum() > 100


def test_missing_bone_still_gets_an_empty_segment(scene):
    labels, volume = _labels_and_volume(scene)
    arr = sitk.GetArrayFromImage(labels)
    arr[arr == 3] = 0
    no_fibula = sitk.GetImageFromArray(arr)
    no_fibula.CopyInformation(labels)
    seg = labelmap_to_segmentation(scene, no_fibula, volume)
    segmentation = seg.GetSegmentation()
    assert segmentation.GetSegmentIdBySegmentName("Fibula")
    back = sitk.GetArrayFromImage(segmentation_to_labelmap(seg, volume))
    assert np.array_equal(back, arr)


def _replace_segment(scene, seg, name: str, mask: np.ndarray, reference: sitk.Image) -> None:
    """What a Segment Editor edit does: replaces one segment's voxels through Slicer's segmentations logic."""
    import slicer

    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.CopyInformation(reference)
    node = volume_node_from_image(scene, image, "edit", labelmap=True)
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    oriented = logic.CreateOrientedImageDataFromVolumeNode(node)
    segment_id = seg.GetSegmentation().GetSegmentIdBySegmentName(name)
    assert logic.SetBinaryLabelmapToSegment(oriented, seg, segment_id, logic.MODE_REPLACE)
    scene.RemoveNode(node)


def test_edited_segmentation_exports_the_edit(scene):
    labels, volume = _labels_and_volume(scene)
    seg = labelmap_to_segmentation(scene, labels, volume)
    expected = sitk.GetArrayFromImage(labels)
    lower = np.zeros(expected.shape, bool)
    lower[: expected.shape[0] // 4] = True
    expected[lower & (expected == 2)] = 0  # the user erases the lower quarter of the tibia
    _replace_segment(scene, seg, "Tibia", expected == 2, labels)
    back = sitk.GetArrayFromImage(segmentation_to_labelmap(seg, volume))
    assert np.array_equal(back, expected)


def test_bad_labelmaps_are_refused(scene, tmp_path):
    labels, volume = _labels_and_volume(scene)
    arr = sitk.GetArrayFromImage(labels)
    arr[0, 0, 0] = 7
    bad = sitk.GetImageFromArray(arr)
    bad.CopyInformation(labels)
    n = scene.GetNumberOfNodes()
    with pytest.raises(InputError, match="not bones"):
        labelmap_to_segmentation(scene, bad, volume)
    assert scene.GetNumberOfNodes() == n
    with pytest.raises(InputError, match=".seg.nrrd"):
        save_segmentation(labelmap_to_segmentation(scene, labels, volume), tmp_path / "x.nrrd")
    empty = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty")
    with pytest.raises(InputError, match="no Femur, Tibia, Fibula or Patella"):
        segmentation_to_labelmap(empty, volume)
