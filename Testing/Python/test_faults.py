"""Fault injection: hostile files, careless commands, kills and interrupts, each a probe of issue #13.

Every test is one probe, named ``test_c<class>_…`` after the issue's class. A probe passes when the misuse
ends in a clear one-line refusal (``kneeseg: error: …``, no traceback) and nothing is lost: no input replaced,
no half-written or hidden file left, no model written or made default behind the user's back.
Most probes call ``cli.main.main`` in-process (fast); kills, SIGINT, memory limits, closed pipes and file-size
limits run ``python -m KneeSegmentationLib.cli.main`` as a child process.
"""
from __future__ import annotations

import gzip
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from KneeSegmentationLib.learn import children
from KneeSegmentationLib.models import store as modelstore
from KneeSegmentationLib.learn.cases import list_cases, save_training_case
from KneeSegmentationLib.cli.main import main
from KneeSegmentationLib.errors import DatasetError, InputError, KneeSegError, ModelError
from KneeSegmentationLib.files import TEMP_PREFIX
from KneeSegmentationLib.segment.io import read_image
from KneeSegmentationLib.models.card import CARD_FILE, WEIGHTS_FILE
from KneeSegmentationLib.models.registry import next_version
from KneeSegmentationLib.models.store import save_model
from KneeSegmentationLib.scene.mrml import create_scene, volume_node_from_image
from KneeSegmentationLib.names import check_name, printable, relative_entry
from KneeSegmentationLib.learn.status import failure_reason
from KneeSegmentationLib.scene.segments import labelmap_to_segmentation, save_segmentation
from phantom import phantom

LIB_PARENT = Path(children.LIB_PARENT)
CHILD_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(LIB_PARENT), str(LIB_PARENT.parent)])}


# ------------------------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def knee(tmp_path_factory) -> Path:
    image, labels = phantom(size=(40, 40, 28), spacing=(2.0, 2.0, 2.5), seed=3)
    folder = tmp_path_factory.mktemp("knee")
    sitk.WriteImage(image, str(folder / "knee.nrrd"))
    sitk.WriteImage(labels, str(folder / "labels.nrrd"))
    return folder / "knee.nrrd"


@pytest.fixture()
def model_copy(tiny_model, tmp_path) -> Path:
    """A private copy of the tiny model in a models root of its own (a probe may damage it)."""
    dst = tmp_path / "models" / "tiny-phantom" / "v1"
    shutil.copytree(tiny_model, dst)
    return dst


def edit_card(model_dir: Path, edit) -> Path:
    card = json.loads((model_dir / CARD_FILE).read_text())
    edit(card)
    (model_dir / CARD_FILE).write_text(json.dumps(card))
    return model_dir


def one_error_line(capsys, code: int, expected: int = 1) -> str:
    err = [line.split("\r")[-1] for line in capsys.readouterr().err.split("\n") if line.split("\r")[-1].strip()]
    assert code == expected, err
    assert len(err) == 1 and err[0].startswith("kneeseg:") and "Traceback" not in err[0], err
    return err[0]


def segment(knee: Path, model: Path, *extra: str) -> list[str]:
    return ["segment", str(knee), "--model", str(model), "--no-n4", "--quiet", *extra]


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) if folder.is_dir() else []


def in_fork(fn, tmp_path: Path) -> tuple[int, str]:
    """(exit status, stderr) of ``fn()`` run in a forked copy of this process: a child without the seconds of
    importing torch again, whose limits (rlimits, closed pipes) cannot harm the test process. For probes that
    run no torch operation (OpenMP's thread pool does not survive a fork)."""
    err = tmp_path / f"fork-{time.monotonic_ns()}.err"
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 99
        try:
            fd = os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 2)
            sys.stderr = open(2, "w", buffering=1, closefd=False)
            code = fn()
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code if isinstance(code, int) else 98)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), err.read_text()


def run_cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "KneeSegmentationLib.cli.main", *args], env=CHILD_ENV,
                          capture_output=True, text=True, timeout=120, **kwargs)


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


# ------------------------------------------------------------------------------ 3 orphaned children
WATCHED_CHILD = """
import sys, time, pathlib
from KneeSegmentationLib.learn.children import watch_parent
watch_parent(interval_s=0.2)
time.sleep(4)
pathlib.Path(sys.argv[1]).write_text("written by an orphan")
"""
PARENT = """
import sys, time, pathlib
from KneeSegmentationLib.learn.children import spawn
log = pathlib.Path(sys.argv[1]) / "child.log"
p = spawn([sys.executable, "-c", sys.argv[2], sys.argv[3]], log)
print(p.pid, flush=True)
time.sleep(60)
"""


def test_c3_a_child_whose_parent_is_killed_stops_without_writing(tmp_path):
    marker = tmp_path / "orphan-wrote-this"
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path), WATCHED_CHILD, str(marker)],
                              env=CHILD_ENV, stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    time.sleep(1.0)
    parent.kill()  # SIGKILL: the parent can clean up nothing
    parent.wait()
    deadline = time.monotonic() + 15
    while children.process_group_alive(child) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not children.process_group_alive(child), "the orphaned child is still running"
    time.sleep(0.5)
    assert not marker.exists()


def test_c3_retrain_pins_the_default_before_any_child_runs(tmp_path, monkeypatch):
    """If a child did finish behind a killed parent, its version must not become the default by being the
    newest: the previous default is pinned before the child starts (and unpinned when stopped cleanly)."""
    from test_retrain import tiny_parent
    from trainer_data import make_tiny_dataset
    from KneeSegmentationLib.learn.retrain import RetrainJob
    from KneeSegmentationLib.learn.status import RetrainSettings

    bundled, user, cases = tmp_path / "bundled", tmp_path / "user", tmp_path / "cases"
    parent = tiny_parent(bundled)
    image, labels = phantom(size=(24, 24, 24), spacing=(3.0, 3.0, 3.0))
    save_training_case(image, labels, cases)
    synthetic = make_tiny_dataset(tmp_path / "synth")
    job = RetrainJob(RetrainSettings(model=parent, cases=cases, synthetic=synthetic, root=user, steps=100000,
                                     device="cpu", n4=False)).start()
    try:
        selection = json.loads((user / "selection.json").read_text())
        assert Path(selection["path"]) == parent.resolve()
    finally:
        status = job.stop()
    assert status.phase == "stopped" and not user.exists()


# ------------------------------------------------------------------------------- 4 silent overwrites
def test_c4_an_input_is_never_an_output(model_copy, knee, capsys):
    before = knee.read_bytes()
    line = one_error_line(capsys, main(segment(knee, model_copy, "--labelmap", str(knee), "--force")))
    assert "input of this run" in line and knee.read_bytes() == before


def test_c4_an_existing_output_needs_force(model_copy, knee, tmp_path, capsys):
    out = tmp_path / "old.nrrd"
    out.write_bytes(b"keep me")
    assert "--force" in one_error_line(capsys, main(segment(knee, model_copy, "--labelmap", str(out))))
    assert out.read_bytes() == b"keep me"
    assert main(segment(knee, model_copy, "--labelmap", str(out), "--force")) == 0
    assert sitk.ReadImage(str(out)).GetSize() == (40, 40, 28)


def test_c4_two_outputs_on_one_file_are_refused(model_copy, knee, tmp_path, capsys):
    out = tmp_path / "same.nrrd"
    line = one_error_line(capsys, main(segment(knee, model_copy, "--labelmap", str(out), "--uncertainty", str(out))))
    assert "same file" in line


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


# ------------------------------------------------------------------------ 6 Ctrl-C while writing
def test_c6_an_interrupt_between_outputs_says_what_was_written(model_copy, knee, tmp_path, capsys, monkeypatch):
    import KneeSegmentationLib.segment.io as io

    real = io.write_image

    def interrupted(image, path, *a, **k):
        if Path(path).name == "u.nrrd":
            raise KeyboardInterrupt
        return real(image, path, *a, **k)

    monkeypatch.setattr(io, "write_image", interrupted)
    seg, lab, unc = tmp_path / "s.seg.nrrd", tmp_path / "l.nrrd", tmp_path / "u.nrrd"
    line = one_error_line(capsys, main(segment(knee, model_copy, "-o", str(seg), "--labelmap", str(lab),
                                               "--uncertainty", str(unc))), expected=130)
    assert f"written: {seg}, {lab}" in line and f"not written: {unc}" in line
    assert seg.is_file() and lab.is_file() and not unc.exists() and not hidden(tmp_path)


@pytest.mark.parametrize("seed", [int(time.time()) % 1000])
def test_c6_sigint_at_a_random_moment_is_truthful_and_leaves_no_temporaries(model_copy, knee, tmp_path, seed):
    out = tmp_path / "out"
    outputs = [out / "s.seg.nrrd", out / "l.nrrd", out / "p.png"]
    proc = subprocess.Popen([sys.executable, "-m", "KneeSegmentationLib.cli.entry", *segment(
        knee, model_copy, "-o", str(outputs[0]), "--labelmap", str(outputs[1]), "--preview", str(outputs[2]))],
        env=CHILD_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(random.Random(seed).uniform(1.0, 12.0))  # import, read, segment or write: any moment
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert "Traceback" not in err, err
    if proc.returncode == 130:
        line = [x for x in err.splitlines() if x.startswith("kneeseg:")][-1]
        parts = line.split("interrupted; ", 1)[1].split("; ")
        written = next((p[len("written: "):].split(", ") for p in parts if p.startswith("written: ")), [])
        for p in outputs:
            assert p.exists() == (str(p) in written), (line, p)
    elif proc.returncode == -signal.SIGINT:  # before Python's handler was set up, or after it was restored at exit
        assert not err.strip() or "Traceback" not in err
    else:
        assert proc.returncode == 0 and all(p.exists() for p in outputs), err
    for p in outputs[:2]:
        if p.exists():
            sitk.ReadImage(str(p))  # whatever exists is complete
    assert not hidden(out)


# ------------------------------------------------------------------------------ 7 preview atomic
def test_c7_a_failing_preview_leaves_no_partial_png(model_copy, knee, tmp_path, capsys, monkeypatch):
    import matplotlib.figure

    def half_then_fail(self, fname, **kwargs):
        Path(fname).write_bytes(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", half_then_fail)
    png = tmp_path / "p.png"
    line = one_error_line(capsys, main(segment(knee, model_copy, "--labelmap", str(tmp_path / "l.nrrd"),
                                               "--preview", str(png))))
    assert "No space left" in line and "written: " in line
    assert not png.exists() and not hidden(tmp_path)


# ----------------------------------------------------------------------- 8 one line, not a traceback
@pytest.mark.parametrize("flag", ["-o", "--labelmap", "--preview", "subfolder"])
def test_c8_an_unwritable_destination_is_one_line(model_copy, knee, tmp_path, capsys, flag):
    """Root ignores file modes, so the read-only places are /proc (no file can be created there) and a
    path under a regular file."""
    names = {"-o": "x.seg.nrrd", "--labelmap": "x.nrrd", "--preview": "x.png", "subfolder": "x.seg.nrrd"}
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    for where in (Path("/proc") / names[flag], a_file / "new" / names[flag]):
        option = "-o" if flag == "subfolder" else flag
        extra = [] if option in ("-o", "--labelmap") else ["--labelmap", str(tmp_path / "l.nrrd")]
        line = one_error_line(capsys, main(segment(knee, model_copy, option, str(where), *extra)))
        assert "cannot" in line
    assert not (tmp_path / "l.nrrd").exists()  # refused before the work


def test_c8_a_full_disk_is_one_line(model_copy, knee, tmp_path, capsys, monkeypatch):
    """The write stage runs with a file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored): the writer gets the real
    EFBIG a full disk would give as ENOSPC."""
    import KneeSegmentationLib.segment.io as io

    real = io.write_image

    def on_a_full_disk(*a, **k):
        old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        old = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200, old[1]))  # below even the header
        try:
            return real(*a, **k)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, old)
            signal.signal(signal.SIGXFSZ, old_handler)

    monkeypatch.setattr(io, "write_image", on_a_full_disk)
    line = one_error_line(capsys, main(segment(knee, model_copy, "--labelmap", str(tmp_path / "f.nrrd"))))
    assert "could not write" in line and "nothing was written" in line
    assert not (tmp_path / "f.nrrd").exists() and not hidden(tmp_path)


@pytest.mark.parametrize("case", ["folder as -o", "preview.xyz", "complex pixels", "negative roi"])
def test_c8_careless_arguments_are_one_line(model_copy, knee, tmp_path, capsys, case):
    (tmp_path / "dir.seg.nrrd").mkdir()
    complex_image = sitk.RealAndImaginaryToComplex(*(sitk.Cast(sitk.ReadImage(str(knee)), sitk.sitkFloat32),) * 2)
    sitk.WriteImage(complex_image, str(tmp_path / "complex.mha"))
    argv = {"folder as -o": segment(knee, model_copy, "-o", str(tmp_path / "dir.seg.nrrd")),
            "preview.xyz": segment(knee, model_copy, "--labelmap", str(tmp_path / "l.nrrd"), "--preview",
                                   str(tmp_path / "p.xyz")),
            "complex pixels": segment(tmp_path / "complex.mha", model_copy, "--labelmap", str(tmp_path / "l.nrrd")),
            "negative roi": segment(knee, model_copy, "--labelmap", str(tmp_path / "l.nrrd"), "--roi", "0,0,0,-1,1,1"),
            }[case]
    if case == "negative roi":
        with pytest.raises(SystemExit) as e:  # argparse: the usage, then one error line, status 2
            main(argv)
        assert e.value.code == 2 and "invalid ROI" in capsys.readouterr().err.splitlines()[-1]
        return
    code = main(argv)
    line = one_error_line(capsys, code)
    assert {"folder as -o": "existing folder", "preview.xyz": ".png", "complex pixels": "complex"}[case] in line


@pytest.mark.parametrize("dataset", ["a file", "under a file", "/proc"])
def test_c8_save_case_into_an_unusable_dataset_is_one_line(knee, tmp_path, capsys, dataset):
    (tmp_path / "f").write_text("")
    target = {"a file": tmp_path / "f", "under a file": tmp_path / "f" / "cases", "/proc": Path("/proc/cases")}
    labels = knee.with_name("labels.nrrd")
    line = one_error_line(capsys, main(["save-case", str(knee), str(labels), "--dataset", str(target[dataset])]))
    assert "cases" in line or "file" in line


def test_c8_info_into_a_closed_pipe_is_quiet(tiny_model, tmp_path):
    """``kneeseg info | head -1``: the reader goes away; no BrokenPipeError traceback."""
    def into_a_closed_pipe():
        read, write = os.pipe()
        os.close(read)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # as Python sets it: writes fail with EPIPE
        os.dup2(write, 1)
        sys.stdout = open(1, "w", closefd=False)
        return main(["info", str(tiny_model)])

    code, err = in_fork(into_a_closed_pipe, tmp_path)
    assert code == 141 and "Traceback" not in err and "BrokenPipe" not in err, err


# ------------------------------------------------------------------------------------ 9 select
def test_c9_select_refuses_a_model_outside_the_roots(model_copy, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KNEESEG_USER_MODELS", str(tmp_path / "user"))
    elsewhere = tmp_path / "elsewhere" / "tiny-phantom" / "v1"
    shutil.copytree(model_copy, elsewhere)
    assert "not in a model root" in one_error_line(capsys, main(["select", str(elsewhere)]))
    assert not (tmp_path / "user" / "selection.json").exists()


def test_c9_select_refuses_a_model_with_a_wrong_checksum(model_copy, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KNEESEG_USER_MODELS", str(model_copy.parents[1]))
    weights = model_copy / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert "checksum mismatch" in one_error_line(capsys, main(["select", str(model_copy)]))
    assert not (model_copy.parents[1] / "selection.json").exists()


# ----------------------------------------------------------------------- 10 outputs checked first
def test_c10_output_problems_are_found_before_the_work(knee, tmp_path, capsys):
    t0 = time.monotonic()
    line = one_error_line(capsys, main(["segment", str(knee), "--model", str(tmp_path / "no-model"),
                                        "-o", str(tmp_path / "o.seg.nrrd"), "--preview", str(tmp_path / "p.jpg")]))
    assert ".png" in line and time.monotonic() - t0 < 5  # the model (missing) was never looked at


# ---------------------------------------------------------------------- 11 concurrent save-case
def test_c11_identical_concurrent_saves_make_one_case(tmp_path):
    image, labels = phantom(size=(32, 32, 24), spacing=(2.0, 2.0, 2.5))
    barrier, outcomes = threading.Barrier(6), []

    def save():
        barrier.wait()
        try:
            outcomes.append(save_training_case(image, labels, tmp_path / "cases"))
        except KneeSegError as e:
            outcomes.append(e)

    threads = [threading.Thread(target=save) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    saved = [o for o in outcomes if isinstance(o, Path)]
    assert len(saved) == 1 and len(list_cases(tmp_path / "cases")) == 1, outcomes
    assert all("saved already" in str(o) or "being saved" in str(o) for o in outcomes if not isinstance(o, Path))
    assert not hidden(tmp_path / "cases")


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
