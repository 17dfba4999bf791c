"""Everyday outputs: statistics, label tables, laterality and specks, DICOM SEG, argument conventions."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from KneeSegmentationLib.cli.main import build_parser, main
from KneeSegmentationLib.cli.args import normalize_argv
from KneeSegmentationLib.constants import BONES, FIBULA
from KneeSegmentationLib.results.labeltable import label_table_paths
from KneeSegmentationLib.segment.laterality import drop_specks, laterality_of
from KneeSegmentationLib.results.statistics import segment_statistics, write_statistics

from phantom import FIBULA_OFFSET, phantom

FLIP_X = (-1, 0, 0, 0, 1, 0, 0, 0, 1)


@pytest.mark.parametrize("direction", [None, FLIP_X, (0, 0, -1, 1, 0, 0, 0, -1, 0)])
def test_laterality_follows_the_fibula_in_patient_coordinates(direction):
    _, labels = phantom(size=(48, 48, 40), spacing=(2.0, 2.0, 2.0), direction=direction)
    # The phantom's fibula sits at -x (LPS: the patient's right) of the tibia: a right knee, whatever the grid.
    assert FIBULA_OFFSET[0] < 0 and laterality_of(labels) == "right"
    mirrored = sitk.GetImageFromArray(sitk.GetArrayFromImage(labels)[:, :, ::-1].copy())  # identity grid
    mirrored.SetDirection(labels.GetDirection())
    if direction in (None, FLIP_X):  # the array's x axis is the patient's x axis: mirroring it swaps the side
        assert laterality_of(mirrored) == "left"
    no_fibula = sitk.GetArrayFromImage(labels)
    no_fibula[no_fibula == FIBULA.label] = 0
    assert laterality_of(sitk.GetImageFromArray(no_fibula)) is None


def test_specks_are_not_found_bones():
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[:10] = 1  # 4000 voxels of 1 mm³ = 4 ml
    labels[15, 15, 15:18] = 3  # 3 voxels: a speck
    out, missing = drop_specks(labels, (1.0, 1.0, 1.0))
    assert missing == ["Tibia", "Fibula", "Patella"] and not (out == 3).any() and (out == 1).sum() == 4000
    assert (labels == 3).sum() == 3  # the input is left alone


def test_statistics_json_and_csv(tmp_path):
    image, labels = phantom(size=(40, 40, 30), spacing=(1.0, 1.0, 2.0))
    stats = segment_statistics(image, labels, "left", "tiny/v1")
    by_name = {s["segment"]: s for s in stats["segments"]}
    arr = sitk.GetArrayFromImage(labels)
    assert by_name["Femur"]["voxels"] == int((arr == 1).sum())
    assert by_name["Femur"]["volume_ml"] == pytest.approx((arr == 1).sum() * 2.0 / 1000, abs=1e-3)
    assert by_name["Femur"]["mean_intensity"] == pytest.approx(float(sitk.GetArrayFromImage(image)[arr == 1].mean()),
                                                               rel=1e-4)
    assert by_name["Patella"]["found"] is False and by_name["Patella"]["mean_intensity"] is None
    assert json.loads(write_statistics(stats, tmp_path / "s.json").read_text())["laterality"] == "left"
    rows = write_statistics(stats, tmp_path / "s.csv").read_text().splitlines()
    assert rows[0].startswith("segment,label,found") and len(rows) == 1 + len(BONES) and rows[1].endswith(",left")


@pytest.mark.parametrize("argv, expected", [
    (["segment", "k.nrrd", "--roi", "-70,-10,0,140,140,140"], "--roi=-70,-10,0,140,140,140"),
    (["segment", "k.nrrd", "--roi=-70,-10,0,140,140,140"], "--roi=-70,-10,0,140,140,140"),
    (["segment", "k.nrrd", "--roi", "-1.5e1,2,3,4,5,6"], "--roi=-1.5e1,2,3,4,5,6"),
])
def test_negative_roi_values_parse(argv, expected):
    assert expected in normalize_argv(argv)
    args = build_parser().parse_args(normalize_argv(argv))
    assert args.roi.center_lps[0] < 0


def test_every_argument_has_help_and_version(capsys):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        assert p.description, name
        for action in p._actions:
            assert action.help, f"{name} {action.dest}"
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("kneeseg 0.")


def test_trainer_help_shows_defaults():
    from trainer.__main__ import build_parser as trainer_parser

    parser = trainer_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    train = sub.choices["train"].format_help()
    assert "(default: " in train and all(a.help for p in sub.choices.values() for a in p._actions)


@pytest.fixture()
def knee_file(tmp_path) -> Path:
    image, _ = phantom(size=(64, 64, 40), spacing=(1.5, 1.5, 2.5), seed=4)
    path = tmp_path / "knee.nii.gz"
    sitk.WriteImage(image, str(path))
    return path


@pytest.mark.parametrize("args, message", [
    (["--labelmap", "{tmp}/l.txt"], "must be an image file"),
    (["--statistics", "{tmp}/s.xml"], ".json or .csv"),
    (["--preview", "{tmp}/p.jpg"], ".png"),
    (["--dicom-seg", "{tmp}/d.dcm"], "is not DICOM"),
    (["--dicom-seg", "{tmp}/d.seg"], "must end with .dcm"),
])
def test_output_suffixes_are_checked_before_the_work(knee_file, tmp_path, capsys, args, message):
    argv = ["segment", str(knee_file), "--model", str(tmp_path / "no-model")] + [a.format(tmp=tmp_path) for a in args]
    assert main(argv) == 1  # the missing model is never reached: the outputs are refused first
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_segment_writes_labelmap_table_and_statistics(tiny_model, knee_file, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["segment", str(knee_file), "--labelmap", str(out / "k.nii.gz"), "--statistics", str(out / "k.json"),
                 "--model", str(tiny_model), "--no-n4", "-q"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "right knee" in printed and "not segmented by this model: Patella" in printed
    json_path, ctbl_path = label_table_paths(out / "k.nii.gz")
    table = json.loads(json_path.read_text())
    assert [e["name"] for e in table["labels"]] == [b.name for b in BONES] and table["laterality"] == "right"
    assert ctbl_path.read_text().splitlines()[3].startswith("1 Femur 241 214 145 255")
    stats = json.loads((out / "k.json").read_text())
    assert stats["laterality"] == "right" and stats["segments"][0]["found"] is True


def test_missing_highdicom_is_one_clear_line(tmp_path, monkeypatch):
    import sys

    from KneeSegmentationLib.results.dicomseg import check_dicom_seg
    from KneeSegmentationLib.errors import KneeSegError

    monkeypatch.setitem(sys.modules, "highdicom", None)  # import highdicom -> ImportError
    with pytest.raises(KneeSegError, match=r"kneesegmentation\[dicom\]"):
        check_dicom_seg(tmp_path, tmp_path / "k.dcm")
