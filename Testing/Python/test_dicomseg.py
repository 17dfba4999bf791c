"""DICOM SEG of a result on the real multi-echo series (highdicom, the optional [dicom] extra)."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from KneeSegmentationLib.cli.main import main
from KneeSegmentationLib.constants import BONES
from KneeSegmentationLib.results.dicomseg import source_files, write_dicom_seg
from KneeSegmentationLib.segment.io import read_image

from realdata import mskt_dicom

hd = pytest.importorskip("highdicom")


def test_dicom_seg_references_the_echo_and_keeps_labels_and_codes(tmp_path):
    import pydicom

    series = mskt_dicom()
    image = read_image(series, echo=1)
    array = np.zeros(sitk.GetArrayViewFromImage(image).shape, np.uint8)
    array[4:12, 40:120, 60:140] = 1
    array[14:20, 100:160, 90:130] = 3
    labels = sitk.GetImageFromArray(array)
    labels.CopyInformation(image)
    path = write_dicom_seg(labels, series, 1, tmp_path / "knee.dcm", "tiny/v1", laterality="right")
    seg = hd.seg.segread(str(path))
    assert [d.SegmentLabel for d in seg.SegmentSequence] == ["Femur", "Fibula"]
    fibula = seg.SegmentSequence[1]
    assert fibula.SegmentedPropertyTypeCodeSequence[0].CodeValue == BONES[2].snomed_code
    assert fibula.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "123037004"
    assert fibula.AnatomicRegionSequence[0].AnatomicRegionModifierSequence[0].CodeValue == "24028007"
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in source_files(series, 1)]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == sources[0].SeriesInstanceUID
    assert {s.SOPInstanceUID for s in sources} >= {r.ReferencedSOPInstanceUID for r in
                                                    seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    volume = seg.get_volume(combine_segments=True, relabel=False)  # segment numbers 1 (Femur), 2 (Fibula)
    got = volume.array  # highdicom orders the frames by position along the slice normal
    assert sorted(np.unique(got).tolist()) == [0, 1, 2]
    assert (got == 1).sum() == (array == 1).sum() and (got == 2).sum() == (array == 3).sum()


def test_dicom_seg_of_a_non_dicom_input_is_refused_at_once(tmp_path, capsys):
    image = sitk.Image(8, 8, 8, sitk.sitkFloat32)
    sitk.WriteImage(image, str(tmp_path / "k.nrrd"))
    assert main(["segment", str(tmp_path / "k.nrrd"), "--dicom-seg", str(tmp_path / "k.dcm")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs a DICOM series" in err[0]
