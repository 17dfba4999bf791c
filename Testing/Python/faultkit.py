"""Shared pieces of the fault-injection probes (test_faults*.py): a phantom knee on disk, a private copy of the
tiny model, and the ways a probe runs kneeseg (in-process, in a fork, as a child) and reads its one error line."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import SimpleITK as sitk

from KneeSegmentationLib.learn import children
from KneeSegmentationLib.models.card import CARD_FILE
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
