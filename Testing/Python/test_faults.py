"""Fault injection, hostile files and limits: each a probe of issue #13 (classes 1, 2, 5, 12-16; the commands'
probes are in test_faults_commands.py).

Every test is one probe, named ``test_c<class>_…`` after the issue's class. A probe passes when the misuse
ends in a clear one-line refusal (``kneeseg: error: …``, no traceback) and nothing is lost: no input replaced,
no half-written or hidden file left, no model written or made default behind the user's back.
"""
from __future__ import annotations

import gzip
import os
import resource
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from KneeSegmentationLib.models import store as modelstore
from KneeSegmentationLib.learn.cases import list_cases
from KneeSegmentationLib.cli.main import main
from KneeSegmentationLib.errors import DatasetError, InputError, ModelError
from KneeSegmentationLib.files import TEMP_PREFIX
from KneeSegmentationLib.segment.io import read_image
from KneeSegmentationLib.models.card import WEIGHTS_FILE
from KneeSegmentationLib.models.registry import next_version
from KneeSegmentationLib.models.store import save_model
from KneeSegmentationLib.scene.mrml import create_scene, volume_node_from_image
from KneeSegmentationLib.names import check_name, printable, relative_entry
from KneeSegmentationLib.learn.status import failure_reason
from KneeSegmentationLib.scene.segments import labelmap_to_segmentation, save_segmentation
from phantom import phantom
import faultkit
from faultkit import edit_card, hidden, in_fork, one_error_line, segment

knee, model_copy = faultkit.knee, faultkit.model_copy  # the fixtures, under the names the probes use


# ----------------------------------------------------------------------------- 1 path traversal
TRAVERSAL = "../../../../tmp/ESCAPED"


@pytest.mark.parametrize("bad", [TRAVERSAL, "a/b", "..", ".hidden", "", "x" * 65, "v1\x1b[2J"])
def test_c1_names_that_leave_their_folder_are_refused(bad):
    with pytest.raises(ModelError, match="invalid model name"):
        check_name(bad)


@pytest.mark.parametrize("command", ["info", "segment", "select"])
def test_c1_a_card_naming_a_path_is_refused_by_every_command(model_copy, knee, tmp_path, capsys, command):
    edit_card(model_copy, lambda c: c.update(name=TRAVERSAL))
    argv = {"info": ["info", str(model_copy)],
            "segment": segment(knee, model_copy, "-o", str(tmp_path / "o.seg.nrrd")),
            "select": ["select", str(model_copy), "--root", str(tmp_path / "models")]}[command]
    line = one_error_line(capsys, main(argv))
    assert "invalid model name" in line and not (tmp_path / "o.seg.nrrd").exists()
    assert not (tmp_path / "models" / "selection.json").exists()


def test_c1_save_model_never_writes_outside_its_root(tmp_path):
    from KneeSegmentationLib.models.card import ModelCard, ModelPlan, Preprocessing
    from KneeSegmentationLib.models.network import UNet3D, UNetConfig

    card = ModelCard(name=TRAVERSAL, version=1,
                     plan=ModelPlan(UNetConfig(features=(4, 8)), Preprocessing((4.0,) * 3, (24,) * 3)))
    with pytest.raises(ModelError, match="invalid model name"):
        save_model(UNet3D(card.network), card, tmp_path / "root")
    assert not Path("/tmp/ESCAPED").exists() and not (tmp_path / "root").exists()


@pytest.mark.parametrize("version", ["1", 2.5, 0, -3, True, 10 ** 9])
def test_c1_odd_versions_are_refused(model_copy, capsys, version):
    edit_card(model_copy, lambda c: c.update(version=version))
    assert "invalid model version" in one_error_line(capsys, main(["info", str(model_copy)]))


@pytest.mark.parametrize("entry", ["../x.nrrd", "/etc/passwd", "a/../../b.nrrd", 7])
def test_c1_dataset_manifest_entries_stay_inside(tmp_path, entry):
    with pytest.raises(DatasetError, match="relative path inside"):
        relative_entry(tmp_path, entry, "manifest entry", DatasetError)


# ----------------------------------------------------------------------------- 2 resource limits
def nrrd_header(size, spacing=(1.0, 1.0, 1.0), encoding="raw", kind="uint8") -> bytes:
    return (f"NRRD0004\ntype: {kind}\ndimension: 3\nspace: left-posterior-superior\n"
            f"sizes: {' '.join(map(str, size))}\nspace directions: ({spacing[0]},0,0) (0,{spacing[1]},0) "
            f"(0,0,{spacing[2]})\nkinds: domain domain domain\nendian: little\nencoding: {encoding}\n"
            "space origin: (0,0,0)\n\n").encode()


def test_c2_a_tiny_header_declaring_a_huge_volume_is_refused_under_a_memory_limit(tmp_path):
    bomb = tmp_path / "bomb.nrrd"
    bomb.write_bytes(nrrd_header((20000, 20000, 5000)))  # 2 TB declared in a few hundred bytes
    limit = 6 << 30

    def capped():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        return main(["segment", str(bomb), "-o", str(tmp_path / "b.seg.nrrd"), "--quiet"])

    t0 = time.monotonic()
    code, err = in_fork(capped, tmp_path)
    assert code == 1 and "declares 20000x20000x5000 voxels" in err and "Traceback" not in err, err
    assert time.monotonic() - t0 < 30


def test_c2_a_gzip_bomb_is_refused_from_its_header(tmp_path):
    bomb = tmp_path / "gz.nrrd"
    bomb.write_bytes(nrrd_header((1024, 1024, 1024), encoding="gzip") + gzip.compress(bytes(1 << 22), 9))
    with pytest.raises(InputError, match="declares 1024x1024x1024"):
        read_image(bomb)


def test_c2_a_large_spacing_grows_no_huge_model_grid(model_copy, tmp_path, capsys):
    image, _ = phantom(size=(40, 40, 28), spacing=(2.0, 2.0, 2.5))
    image.SetSpacing((50.0, 50.0, 50.0))  # 2 m x 2 m x 1.4 m: 400x400x280 at the model's 5 mm
    path = tmp_path / "wide.nrrd"
    sitk.WriteImage(image, str(path))
    line = one_error_line(capsys, main(segment(path, model_copy, "-o", str(tmp_path / "w.seg.nrrd"))))
    assert "at the model's spacing" in line and "--roi" in line


def test_c2_a_huge_roi_is_refused_before_allocating(model_copy, knee, tmp_path, capsys):
    line = one_error_line(capsys, main(segment(knee, model_copy, "-o", str(tmp_path / "r.seg.nrrd"),
                                               "--roi", "0,0,0,1e5,1e5,1e5")))
    assert "at the model's spacing" in line


@pytest.mark.parametrize("key, value, message", [
    ("patch_size", [4096, 4096, 4096], "patch size"),
    ("spacing_mm", [0.0001, 0.0001, 0.0001], "input spacing"),
    ("spacing_mm", [0.0, 5.0, 5.0], "input spacing"),
    ("spacing_mm", [-5.0, 5.0, 5.0], "input spacing"),
    ("features", [100000, 16], "network features"),
])
def test_c2_a_card_asking_for_absurd_memory_is_refused(model_copy, knee, tmp_path, capsys, key, value, message):
    section = "network" if key == "features" else "input"
    edit_card(model_copy, lambda c: c[section].update({key: value}))
    line = one_error_line(capsys, main(segment(knee, model_copy, "-o", str(tmp_path / "m.seg.nrrd"))))
    assert message in line


def test_c2_a_384x384x160_image_passes_the_limits(tmp_path):
    array = np.zeros((160, 384, 384), np.int16)
    array[40:120, 100:300, 100:300] = 300
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.365, 0.365, 0.7))
    sitk.WriteImage(image, str(tmp_path / "big.nrrd"), True)
    read = read_image(tmp_path / "big.nrrd")
    assert read.GetSize() == (384, 384, 160)
    from KneeSegmentationLib.segment.preprocess import whole_image_grid

    grid, _ = whole_image_grid(read, (1.0, 1.0, 1.0), (96, 96, 96), 8)  # a 1 mm model grid fits too
    assert np.prod(grid.GetSize()) < 320 ** 3


# ----------------------------------------------------------------------------- 5 save-case geometry
def test_c5_a_segmentation_of_a_shifted_image_is_refused_like_a_labelmap(tmp_path, capsys):
    image, labels = phantom(size=(30, 30, 24), spacing=(2.0, 2.0, 2.5))
    sitk.WriteImage(image, str(tmp_path / "knee.nrrd"))
    shifted = sitk.Image(image)
    shifted.SetOrigin([o + d for o, d in zip(image.GetOrigin(), (25.0, 0.0, 0.0))])
    shifted_labels = sitk.Image(labels)
    shifted_labels.CopyInformation(shifted)
    scene = create_scene()
    save_segmentation(labelmap_to_segmentation(scene, shifted_labels, volume_node_from_image(scene, shifted, "s")),
                      tmp_path / "shifted.seg.nrrd")
    sitk.WriteImage(shifted_labels, str(tmp_path / "shifted-labels.nrrd"))
    for corrected in ("shifted.seg.nrrd", "shifted-labels.nrrd"):
        line = one_error_line(capsys, main(["save-case", str(tmp_path / "knee.nrrd"), str(tmp_path / corrected),
                                            "--dataset", str(tmp_path / "cases")]))
        assert "grid" in line and ("shifted by 25 mm" in line or "origin" in line)
    assert not list_cases(tmp_path / "cases")


# -------------------------------------------------------------------------- 12 stale temporaries
def test_c12_temporaries_of_killed_runs_are_recognisable_and_removed(model_copy, knee, tmp_path):
    old_file = tmp_path / f"{TEMP_PREFIX}x.seg.nrrd-abcd.seg.nrrd"
    old_dir = tmp_path / f"{TEMP_PREFIX}u.nrrd-efgh"
    young = tmp_path / f"{TEMP_PREFIX}l.nrrd-ijkl"
    foreign = tmp_path / ".someone-elses.tmp"
    for p in (old_file, foreign):
        p.write_text("x")
    for p in (old_dir, young):
        p.mkdir()
    hour_ago = time.time() - 3600
    for p in (old_file, old_dir, foreign):
        os.utime(p, (hour_ago, hour_ago))
    assert main(segment(knee, model_copy, "--labelmap", str(tmp_path / "l.nrrd"))) == 0
    assert sorted(hidden(tmp_path)) == sorted([young.name, foreign.name])


# --------------------------------------------------------------------------- 13 terminal escapes
def test_c13_escape_codes_in_a_card_are_not_printed(model_copy, capsys):
    edit_card(model_copy, lambda c: c.update(description="\x1b]0;owned\x07\x1b[2Jhello\rX", parent="a\x1b[31mb"))
    assert main(["info", str(model_copy)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\r" not in out and "hello" in out
    assert printable("a\u202eb") == "a?b"


# ----------------------------------------------------------------------------- 14 messages
def test_c14_an_unreadable_file_is_not_called_missing(knee, monkeypatch):
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != knee)
    with pytest.raises(InputError, match="cannot be read"):
        read_image(knee)


def test_c14_an_unreadable_dicom_folder_is_not_called_empty(tmp_path, monkeypatch):
    folder = tmp_path / "dicom"
    folder.mkdir()
    real = os.listdir
    monkeypatch.setattr(os, "listdir", lambda p=".": (_ for _ in ()).throw(PermissionError(13, "Permission denied"))
                        if Path(p) == folder else real(p))
    with pytest.raises(InputError, match="cannot be read"):
        read_image(folder)


def test_c14_a_state_dict_mismatch_names_the_tensor(model_copy):
    from safetensors.torch import load_file, save_file

    from KneeSegmentationLib.files import sha256_of

    weights = model_copy / WEIGHTS_FILE
    state = load_file(str(weights))
    name = sorted(state)[0]
    state["renamed.weight"] = state.pop(name)
    save_file(state, str(weights))
    edit_card(model_copy, lambda c: c["weights"].update(sha256=sha256_of(weights)))
    with pytest.raises(ModelError) as e:
        modelstore.load_model(model_copy)
    assert name in str(e.value) and "renamed.weight" in str(e.value)


def test_c14_a_retrain_failure_says_why_on_its_first_line():
    log = ("step 1 loss 0.9\nTraceback (most recent call last):\n  File \"x.py\", line 3, in <module>\n"
           "KneeSegmentationLib.errors.DatasetError: case 7: label.nrrd is missing\n")
    assert failure_reason(log) == "KneeSegmentationLib.errors.DatasetError: case 7: label.nrrd is missing"


# ------------------------------------------------------------------------------- 15 geometry
@pytest.mark.parametrize("direction, message", [
    ((1, 0, 0, 0.4, 1, 0, 0, 0, 1), "not orthonormal"),
    ((1, 0, 0, 0, 1, 0, 0, 1, 1e-9), "impossible voxel spacing|not orthonormal"),  # NRRD keeps axis lengths
])
def test_c15_broken_directions_are_refused(tmp_path, direction, message):
    image, _ = phantom(size=(20, 20, 16), spacing=(2.0, 2.0, 2.5))
    image.SetDirection(direction)
    sitk.WriteImage(image, str(tmp_path / "skew.nrrd"))
    with pytest.raises(InputError, match=message):
        read_image(tmp_path / "skew.nrrd")


def test_c15_a_vanishing_spacing_is_refused(tmp_path):
    image, _ = phantom(size=(20, 20, 16), spacing=(2.0, 2.0, 2.5))
    image.SetSpacing((2.0, 2.0, 6e-10))
    sitk.WriteImage(image, str(tmp_path / "thin.nrrd"))
    with pytest.raises(InputError, match="impossible voxel spacing"):
        read_image(tmp_path / "thin.nrrd")


# ------------------------------------------------------------------------- 16 stray version folder
def test_c16_a_stray_empty_version_folder_is_skipped(model_copy):
    root = model_copy.parents[1]
    (root / "tiny-phantom" / "v3").mkdir()
    assert next_version("tiny-phantom", [root]) == 4
    loaded = modelstore.load_model(model_copy)
    assert save_model(loaded.network, loaded.card, root).name == "v4"
    assert not any((root / "tiny-phantom" / "v3").iterdir())  # the stray folder is not ours to fill
