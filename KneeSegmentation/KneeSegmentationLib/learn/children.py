"""Child processes of the library (fine-tuning, comparison): which interpreter, with which paths, started in a
session of their own so that Stop can end the whole tree at once, and the tail of their logs for messages.

Separate from ``retrain`` because none of it is about retraining: it is how the library runs and ends a
long job in another process, inside Slicer (``PythonSlicer``) or out of it.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Sequence

STOP_GRACE_S = 3.0  # SIGTERM, then SIGKILL after this long
LOG_TAIL_CHARS = 2000
LIB_PARENT = Path(__file__).resolve().parents[2]  # the folder holding KneeSegmentationLib/
# Where ``trainer/`` may be: the repository root of a checkout, or beside the library in an installed extension.
TRAINER_PARENTS = (LIB_PARENT.parent, LIB_PARENT)


def default_python() -> str:
    """The interpreter for the children: ``PythonSlicer`` inside Slicer (whose ``sys.executable`` may be the
    application itself), else this interpreter."""
    if "slicer" in sys.modules and hasattr(sys.modules["slicer"], "app"):
        found = shutil.which("PythonSlicer", path=os.pathsep.join([str(Path(sys.executable).parent),
                                                                   os.environ.get("PATH", "")]))
        if found:
            return found
    return sys.executable


def trainer_parent() -> Path | None:
    """The folder from which ``python -m trainer`` works, or None if the trainer is not installed."""
    return next((p for p in TRAINER_PARENTS if (p / "trainer" / "__main__.py").is_file()), None)


def child_env() -> dict:
    """The child finds the library and the trainer whether or not they are installed (as in Slicer)."""
    env = dict(os.environ)
    paths = [str(p) for p in dict.fromkeys([trainer_parent() or LIB_PARENT, LIB_PARENT])]
    env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("PYTHONUNBUFFERED", "1")
    env[PARENT_PID_ENV] = str(os.getpid())
    return env


def spawn(command: Sequence[str], log_path: Path) -> subprocess.Popen:
    """Starts ``command`` in its own session / process group, output appended to ``log_path``."""
    kwargs: dict = {}
    if os.name == "posix":
        kwargs["start_new_session"] = True
    else:
        kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
    with open(log_path, "ab") as log:
        return subprocess.Popen(list(command), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=child_env(), cwd=str(log_path.parent), **kwargs)


def kill_tree(proc: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> None:
    """Ends ``proc`` and every process it started (its whole process group): TERM, then KILL after
    ``grace_s``; the group is KILLed in any case, so that no grandchild (a DataLoader worker, torchrun's
    ranks) outlives its leader."""
    if os.name != "posix":
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(proc.pid)], capture_output=True, check=False)
        proc.wait(10.0)
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        if sig == signal.SIGTERM:
            try:
                proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                pass
    proc.wait(10.0)


def process_group_alive(pgid: int) -> bool:
    """True while any process of group ``pgid`` lives (one we may not signal counts as alive)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def log_tail(path: Path, chars: int = LOG_TAIL_CHARS) -> str:
    """The end of a child's log, for an error message ("" if there is none yet)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return text[-chars:]


# ------------------------------------------------------------------------------------ orphaned children
PARENT_PID_ENV = "KNEESEG_PARENT_PID"  # set by ``child_env``: the pid of the process that started the child
ORPHAN_POLL_S = 1.0
EXIT_ORPHANED = 75  # the child's exit status when it stopped because its parent was gone


_watched_parent: list[int] = []  # the parent pid ``watch_parent`` took from the environment


def parent_is_gone() -> bool:
    """True in a child started by ``spawn`` whose parent has died (it was re-parented: ``os.getppid``
    changed); False in any other process."""
    expected = str(_watched_parent[0]) if _watched_parent else os.environ.get(PARENT_PID_ENV, "")
    return expected.isdigit() and os.getppid() != int(expected)


def exit_if_orphaned() -> None:
    """Ends this process at once, writing nothing more, if it is an orphaned child (see ``parent_is_gone``).
    Called before a child makes anything permanent (``save_model``'s rename)."""
    if parent_is_gone():
        print("kneeseg: the process that started this job is gone; stopping without writing", file=sys.stderr)
        os._exit(EXIT_ORPHANED)


def watch_parent(interval_s: float = ORPHAN_POLL_S) -> None:
    """In a child: a daemon thread ends the process within ``interval_s`` of its parent's death, so a
    ``kneeseg retrain`` killed with SIGKILL does not leave a trainer running (and later writing) behind."""
    import threading
    import time

    expected = os.environ.pop(PARENT_PID_ENV, "")  # not inherited by our own children (DataLoader workers)
    if not expected.isdigit():
        return
    _watched_parent[:] = [int(expected)]
    exit_if_orphaned()

    def loop() -> None:
        while True:
            time.sleep(interval_s)
            exit_if_orphaned()

    threading.Thread(target=loop, name="kneeseg-parent-watch", daemon=True).start()
