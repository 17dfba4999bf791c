"""Fault injection, careless commands, kills and interrupts: each a probe of issue #13 (classes 3, 4, 6-11).

Most probes call ``cli.main.main`` in-process (fast); kills, SIGINT, memory limits, closed pipes and file-size
limits run ``python -m KneeSegmentationLib.cli.main`` as a child process (``faultkit``).
"""
from __future__ import annotations

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

import pytest
import SimpleITK as sitk

from KneeSegmentationLib.learn import children
from KneeSegmentationLib.learn.cases import list_cases, save_training_case
from KneeSegmentationLib.cli.main import main
from KneeSegmentationLib.errors import KneeSegError
from KneeSegmentationLib.models.card import WEIGHTS_FILE
from phantom import phantom
import faultkit
from faultkit import CHILD_ENV, hidden, in_fork, one_error_line, segment

knee, model_copy = faultkit.knee, faultkit.model_copy  # the fixtures, under the names the probes use


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
