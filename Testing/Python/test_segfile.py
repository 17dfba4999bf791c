"""``.seg.nrrd`` written without MRML (KneeSegmentationLib/results/segfile.py), read back through slicer-core's real storage node."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from KneeSegmentationLib.constants import BONES
from KneeSegmentationLib.errors import InputError
from KneeSegmentationLib.scene.mrml import volume_node_from_image
from KneeSegmentationLib.results.segfile import read_seg_nrrd, write_seg_nrrd
from KneeSegmentationLib.scene.segments import load_segmentation, model_tag_of, segmentation_to_labelmap, terminology_entry
from KneeSegmentationLib.results.terminology import terminology_string

from phantom import four_bones

OBLIQUE = sitk.VersorTransform((0.2, -0.4, 1.0), 0.6).GetMatrix()


@pytest.mark.parametrize("direction", [None, OBLIQUE, (0, 0, -1, 1, 0, 0, 0, -1, 0)])
@pytest.mark.parametrize("laterality", [None, "left"])
def test_slicer_reads_our_seg_nrrd_exactly(scene, tmp_path, direction, laterality):
    image, labels = four_bones(direction)
    path = write_seg_nrrd(labels, tmp_path / "knee.seg.nrrd", model_tag="tiny/v1", laterality=laterality)
    node = load_segmentation(scene, path)
    segmentation = node.GetSegmentation()
    assert [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())] == \
        [b.name for b in BONES]
    for bone in BONES:
        segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(bone.name))
        assert np.allclose(segment.GetColor(), bone.color, atol=1e-6)
        assert segment.GetTerminology() == terminology_string(bone, laterality)
    assert model_tag_of(node) == "tiny/v1"
    volume = volume_node_from_image(scene, image, "knee")
    back = segmentation_to_labelmap(node, volume)
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(labels))
    assert np.allclose(back.GetOrigin(), labels.GetOrigin(), atol=1e-6)
    assert np.allclose(back.GetDirection(), labels.GetDirection(), atol=1e-6)
    assert np.allclose(back.GetSpacing(), labels.GetSpacing(), atol=1e-6)


def test_terminology_matches_slicers_serializer_and_parses():
    import slicer

    logic = slicer.vtkSlicerTerminologiesModuleLogic
    for bone in BONES:
        assert terminology_string(bone) == terminology_entry(bone)
    entry = slicer.vtkSlicerTerminologyEntry()
    assert logic.DeserializeTerminologyEntry(terminology_string(BONES[0], "right"), entry)
    assert entry.GetTypeObject().GetCodeValue() == BONES[0].snomed_code
    assert entry.GetAnatomicRegionObject().GetCodeMeaning() == "Knee"
    assert entry.GetAnatomicRegionModifierObject().GetCodeValue() == "24028007"


def test_empty_labelmap_and_own_reader(scene, tmp_path):
    _, labels = four_bones(None)
    empty = sitk.Image(labels.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(labels)
    node = load_segmentation(scene, write_seg_nrrd(empty, tmp_path / "empty.seg.nrrd"))
    assert node.GetSegmentation().GetNumberOfSegments() == len(BONES)
    back, segments = read_seg_nrrd(write_seg_nrrd(labels, tmp_path / "k.seg.nrrd", laterality="right"))
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(labels))
    assert [s["name"] for s in segments] == [b.name for b in BONES]
    assert "24028007" in segments[0]["tags"]["TerminologyEntry"]


def test_refuses_bad_suffix_and_foreign_labels(tmp_path):
    _, labels = four_bones(None)
    with pytest.raises(InputError, match="seg.nrrd"):
        write_seg_nrrd(labels, tmp_path / "knee.nrrd")
    with pytest.raises(InputError, match="not bones"):
        write_seg_nrrd(labels * 3, tmp_path / "knee.seg.nrrd")
