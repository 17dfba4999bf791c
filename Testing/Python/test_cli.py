"""``kneeseg`` end to end, as a user runs it (a real subprocess for the console script)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from KneeSegmentationLib.cli.main import main

from phantom import phantom


@pytest.fixture()
def knee_file(tmp_path) -> Path:
    image, labels = phantom(size=(64, 64, 40), spacing=(1.5, 1.5, 2.5), seed=4)
    path = tmp_path / "knee.nii.gz"
    sitk.WriteImage(image, str(path))
    sitk.WriteImage(labels, str(tmp_path / "truth.nrrd"))
    return path


def test_segment_writes_all_outputs(tiny_model, knee_file, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["segment", str(knee_file), "-o", str(out / "knee.seg.nrrd"), "--labelmap", str(out / "labels.nrrd"),
                 "--uncertainty", str(out / "entropy.nrrd"), "--preview", str(out / "knee.png"),
                 "--model", str(tiny_model), "--no-n4", "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "Femur" in printed and "timings:" in printed and "network" in printed
    labels = sitk.ReadImage(str(out / "labels.nrrd"))
    truth = sitk.ReadImage(str(tmp_path / "truth.nrrd"))
    assert labels.GetSize() == truth.GetSize() and np.allclose(labels.GetOrigin(), truth.GetOrigin())
    a, b = sitk.GetArrayFromImage(labels), sitk.GetArrayFromImage(truth)
    assert 2 * ((a == 1) & (b == 1)).sum() / ((a == 1).sum() + (b == 1).sum()) > 0.8
    assert (out / "knee.png").stat().st_size > 10_000 and (out / "entropy.nrrd").is_file()
    import slicerio

    seg = slicerio.read_segmentation(str(out / "knee.seg.nrrd"))
    assert [s["name"] for s in seg["segments"]] == ["Femur", "Tibia", "Fibula", "Patella"]


@pytest.mark.parametrize("args, message", [
    (["segment", "missing.nrrd", "-o", "x.seg.nrrd"], "error:"),
    (["segment", "{knee}", "-o", "x.nrrd"], "must end with .seg.nrrd"),
    (["segment", "{knee}"], "nothing to write"),
    (["segment", "{knee}", "-o", "x.seg.nrrd", "--model", "{tmp}/nomodel"], "model not found"),
    (["info", "{tmp}"], "no model.json"),
])
def test_failures_are_one_line_and_non_zero(knee_file, tmp_path, capsys, args, message):
    argv = [a.format(knee=knee_file, tmp=tmp_path) for a in args]
    code = main(argv)
    # What a terminal shows: carriage returns (the progress bar) overwrite their line.
    err = [line.split("\r")[-1] for line in capsys.readouterr().err.split("\n") if line.split("\r")[-1].strip()]
    assert code == 1 and len(err) == 1 and err[0].startswith("kneeseg: error:") and message in err[0]
    assert not list(tmp_path.glob("*.seg.nrrd"))


@pytest.mark.parametrize("argv", [["segment", "in.nrrd", "-o", "out.seg.nrrd"], ["batch", "in", "out"]])
def test_the_mirrored_pass_is_the_models_choice_unless_asked(argv):
    from KneeSegmentationLib.cli.main import build_parser, settings_from

    parser = build_parser()  # None: the pipeline mirrors when the model was trained on mirrored knees
    assert parser.parse_args(argv).tta is None and settings_from(parser.parse_args(argv)).tta is None
    assert parser.parse_args(argv + ["--tta"]).tta is True
    assert parser.parse_args(argv + ["--no-tta"]).tta is False
    assert settings_from(parser.parse_args(argv + ["--no-tta"])).tta is False


def test_bad_roi_is_a_usage_error(knee_file):
    with pytest.raises(SystemExit) as e:
        main(["segment", str(knee_file), "-o", "x.seg.nrrd", "--roi", "1,2,3"])
    assert e.value.code == 2


def test_info_prints_the_card(tiny_model, capsys):
    assert main(["info", str(tiny_model)]) == 0
    printed = capsys.readouterr().out
    # The first line is the plain summary the panel shows too; the technical card follows.
    assert printed.splitlines()[0] == "Tiny phantom v1 — Femur, Tibia, Fibula; no held-out validation recorded"
    assert "tiny-phantom/v1 in " in printed and "spacing" in printed and "sha256" in printed


def test_console_script_runs(tiny_model, knee_file, tmp_path):
    exe = Path(sys.executable).with_name("kneeseg")
    proc = subprocess.run([str(exe), "segment", str(knee_file), "-o", str(tmp_path / "k.seg.nrrd"),
                           "--model", str(tiny_model), "--no-n4", "--roi", "0,0,0,90,90,90"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "k.seg.nrrd").is_file()
    proc = subprocess.run([str(exe), "segment", str(tmp_path / "nothing.nrrd"), "-o", str(tmp_path / "n.seg.nrrd")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1


def test_models_lists_versions_with_their_dice_and_marks_the_default(tmp_path, monkeypatch, capsys):
    from KneeSegmentationLib.models.registry import list_models, select_default_model
    from KneeSegmentationLib.paths import bundled_models_root

    monkeypatch.setenv("KNEESEG_USER_MODELS", str(tmp_path))
    oldest = min(list_models([bundled_models_root()]), key=lambda e: e.version)
    select_default_model(oldest.path, tmp_path)  # a rollback: the default is no longer the newest
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    marked = [line for line in lines if line.startswith("* ")]
    assert len(marked) == 1 and marked[0].split()[1] == oldest.card.tag
    assert any(line.startswith("    ") and "Dice Femur 0." in line for line in lines)  # each version's figures
