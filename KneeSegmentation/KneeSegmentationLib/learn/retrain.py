"""Retraining from the user's corrected cases, in a separate process, measured against the previous model.

    job = RetrainJob(RetrainSettings(model=None, cases=dataset_dir, synthetic=synth_dataset)).start()
    status = job.poll()     # from a QTimer (or a CLI loop): phase, step/total, loss and validation curves
    job.stop()              # kills the process tree; no partial model is left anywhere
    status.result           # RetrainResult once finished: new model, its Dice on held-out cases and the parent's

Why a process, not a thread: training holds the CPU (or GPU) for minutes to hours and cannot be cancelled
cooperatively inside torch's ops; a process in its own session can be killed as a whole (``os.killpg``) the
moment the user presses Stop, and Slicer's GUI thread only reads two small CSV files per poll.

Phases, each a child process of the same Python (``PythonSlicer`` inside Slicer) in its own session:
1. **training**: ``python -m trainer finetune`` on the cases minus a held-out share, mixed with synthetic
   images; progress is read from the run folder the trainer already writes (``train.csv``: step, loss;
   ``val.csv``: step, Dice per bone; ``config.json``: total steps), so no extra protocol is needed. The new
   version appears only through ``models.store.save_model``'s atomic rename at the very end; the trainer then
   names it in the run folder's ``result.json`` (file names and record: ``learn/contract.py``).
2. **evaluating**: ``python -m KneeSegmentationLib.learn.retrain compare``: the parent and the new model segment the
   held-out cases through the same pipeline the module uses; per-bone Dice of each goes to
   ``user_metrics.json`` in the models root, beside each other.
3. The new version becomes the default (``models.registry.select_default_model``) only if it beats the parent on
   held-out cases, or if the user said so (``make_default="yes"``); otherwise the previous default stays
   selected explicitly. Rollback is ``select_default_model(older_version_folder)`` at any time.

Stop kills the process group, then removes what the child may have left: the temporary work folder (run
folder, checkpoints, case links) and any hidden temporary folder ``save_model`` had started in the models
root. A version folder is either complete (renamed into place) or absent.

This module holds the job and the comparison child's entry point; the settings, status and progress reading
are ``learn/status.py``'s, the held-out split, the comparison, ``user_metrics.json`` and the default decision
``learn/compare.py``'s, the run folder's file names and ``result.json`` ``learn/contract.py``'s.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from .cases import list_cases
from .children import TRAINER_PARENTS, kill_tree, log_tail, spawn, trainer_parent, watch_parent
from ..errors import DatasetError, KneeSegError, ModelError
from ..files import write_text_atomically
from ..models.card import VERSION_DIR, read_card
from ..models.registry import SELECTION_FILE, default_model, select_default_model, selected_model_path
from ..paths import (bundled_models_root, missing_synthetic_dataset, synthetic_dataset_dir, training_cases_dir,
                    user_models_root)
from .compare import compare_on_cases, decide_default, record_user_metrics, split_cases
from .status import RetrainResult, RetrainSettings, RetrainStatus, failure_reason, read_progress
from .contract import read_result


# ------------------------------------------------------------------------------------------- set-up
def _link_cases(cases: list[Path], folder: Path) -> Path:
    folder.mkdir(parents=True)
    for case in cases:
        try:
            os.symlink(case.resolve(), folder / case.name, target_is_directory=True)
        except OSError:  # e.g. Windows without the symlink privilege
            shutil.copytree(case, folder / case.name)
    return folder



# ------------------------------------------------------------------------------------------------ job
class RetrainJob:
    """One retraining: start(), then poll() from a timer until ``status.finished``; stop() at any time.

    Never blocks the caller for long: start() spawns the child and returns; poll() reads small files;
    stop() waits at most a few seconds for the process tree to die."""

    def __init__(self, settings: RetrainSettings | None = None) -> None:
        self.settings = settings or RetrainSettings()
        self._lock = threading.Lock()
        self._phase = "starting"
        self._message = "Preparing"
        self._error: str | None = None
        self._result: RetrainResult | None = None
        self._proc: subprocess.Popen | None = None
        self._work: Path | None = None
        self._t0 = self._t_train_end = self._t_end = None
        self._progress: tuple[int, int, list, list] = (0, self.settings.steps, [], [])

    # -- set-up
    def _resolve(self) -> None:
        s = self.settings
        # absolute paths: the children run in the work folder
        self.parent = (Path(s.model) if s.model is not None else default_model().path).resolve()
        self.parent_card = read_card(self.parent)
        self.cases_dir = (Path(s.cases) if s.cases is not None else training_cases_dir()).resolve()
        self.synthetic = (Path(s.synthetic) if s.synthetic is not None else synthetic_dataset_dir()).resolve()
        self.root = (Path(s.root) if s.root is not None else user_models_root()).resolve()
        cases = [c.path for c in list_cases(self.cases_dir)]
        if not cases:
            raise DatasetError(f"no saved training cases in {self.cases_dir}; save a corrected segmentation first")
        if not (self.synthetic / "manifest.json").is_file():
            raise DatasetError(missing_synthetic_dataset(self.synthetic))
        if trainer_parent() is None:
            raise KneeSegError("the trainer (trainer/) is not installed beside the library "
                               f"(looked in {', '.join(map(str, TRAINER_PARENTS))}); retraining needs it")
        self.train_cases, self.eval_cases, self.held_out = split_cases(cases, s.holdout)
        self._default_before = self._current_default()
        self.family_dir = self.root / self.parent_card.name
        self._before = set(os.listdir(self.family_dir)) if self.family_dir.is_dir() else None
        self._root_existed = self.root.is_dir()

    def finetune_command(self) -> list[str]:
        s = self.settings
        return [s.python, "-m", "trainer", "finetune", "--model", str(self.parent),
                "--cases", str(self._work / "train_cases"), "--dataset", str(self.synthetic),
                "--run", str(self._work / "run"), "--root", str(self.root), "--steps", str(s.steps),
                "--fresh", "--workers", "0", *s.trainer_args]  # no grandchild to outlive a killed run

    def start(self) -> "RetrainJob":
        self._resolve()
        # Before any child exists: pin the current default, so that a version written by a child whose parent
        # died (it stops, but may be past its last check) never becomes the default just by being the newest.
        self._pinned = self._keep_current_default()
        self._t0 = time.perf_counter()
        self._work = Path(tempfile.mkdtemp(prefix="kneeseg-retrain-"))
        _link_cases(self.train_cases, self._work / "train_cases")
        with self._lock:
            self._phase, self._message = "training", f"Fine-tuning {self.parent_card.tag} on {len(self.train_cases)} case(s)"
            self._proc = spawn(self.finetune_command(), self._work / "train.log")
        return self

    # -- polling
    def poll(self) -> RetrainStatus:
        with self._lock:
            self._refresh_progress()
            self._advance()
            return self._status_unlocked()

    def _refresh_progress(self) -> None:
        """Keeps the last progress read from the run folder (the folder goes away with the work folder)."""
        run = self._work / "run" if self._work else None
        if run is not None and run.is_dir():
            self._progress = read_progress(run)

    def wait(self, timeout: float | None = None, interval: float = 0.5) -> RetrainStatus:
        """Polls until the job ends (CLI and tests; the GUI polls from a timer instead)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.poll()
            if status.finished or (deadline is not None and time.monotonic() > deadline):
                return status
            time.sleep(interval)

    def _advance(self) -> None:
        """Moves to the next phase when the current child has exited (called under the lock)."""
        if self._phase not in ("training", "evaluating") or self._proc is None or self._proc.poll() is None:
            return
        code = self._proc.returncode
        if self._phase == "training":
            self._refresh_progress()
            self._t_train_end = time.perf_counter()
            log = log_tail(self._work / "train.log", 1 << 16)
            written = read_result(self._work / "run")
            if code != 0 or not written or not written.get("model"):
                self._fail(f"fine-tuning failed (exit status {code}): {failure_reason(log)}\n"
                           f"{log_tail(self._work / 'train.log')}")
                return
            self.new_model = Path(written["model"])
            self._keep_current_default()
            self._phase, self._message = "evaluating", (
                f"Comparing {self.parent_card.tag} and the new version on {len(self.eval_cases)} "
                f"{'held-out' if self.held_out else 'training'} case(s)")
            cmd = [self.settings.python, "-m", "KneeSegmentationLib.learn.retrain", "compare",
                   "--out", str(self._work / "compare.json"), "--device", self.settings.device,
                   *([] if self.settings.n4 else ["--no-n4"]), "--models", str(self.parent), str(self.new_model),
                   "--cases", *map(str, self.eval_cases)]
            self._proc = spawn(cmd, self._work / "compare.log")
            return
        if code != 0 or not (self._work / "compare.json").is_file():
            compare_log = log_tail(self._work / "compare.log", 1 << 16)
            self._fail(f"the comparison failed (exit status {code}): {failure_reason(compare_log)}; the new version "
                       f"{self.new_model} is kept but not made default\n{compare_log[-2000:]}")
            return
        try:
            self._register(json.loads((self._work / "compare.json").read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, KneeSegError) as e:
            self._fail(f"could not record the comparison ({e}); the new version {self.new_model} is kept but not "
                       "made default")

    def _keep_current_default(self) -> bool:
        """The new version must not become the default just by being the newest: unless a selection exists,
        pin the model that was the default before the retraining started. True if it wrote the selection."""
        if selected_model_path([self.root]) is None:
            select_default_model(self._default_before, self.root, roots=self._roots())
            return True
        return False

    def _unpin_if_nothing_new(self) -> None:
        """Removes the selection ``start`` wrote when no new version exists: the models root is as before."""
        if getattr(self, "_pinned", False) and not self._new_version_dirs():
            try:
                (self.root / SELECTION_FILE).unlink()
            except OSError:
                pass

    def _current_default(self) -> Path:
        """The default model of the parent's family before retraining (pinned later so that the new version
        does not become the default just by being the newest). A default of another family (other models
        installed beside) says nothing about this one: the parent stands in for it."""
        try:
            before = default_model(self._roots())
        except ModelError:
            return self.parent
        return before.path if before.name == self.parent_card.name else self.parent

    def _roots(self) -> list[Path]:
        roots = [bundled_models_root(), self.root, self.parent.parent.parent]
        return list(dict.fromkeys(r.resolve() for r in roots if r.is_dir()))

    def _register(self, compared: list[dict]) -> None:
        parent, new = compared
        make, reason = decide_default(new, parent, self.held_out, self.settings.make_default)
        now = time.perf_counter()
        train_s, eval_s = self._t_train_end - self._t0, now - self._t_train_end
        record = {"tag": new["tag"], "parent": parent["tag"], "parent_model": str(self.parent.resolve()),
                  "evaluated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "held_out": self.held_out, "evaluation_cases": [c.name for c in self.eval_cases],
                  "training_cases": [c.name for c in self.train_cases], "steps": self.settings.steps,
                  "train_s": round(train_s, 1), "metrics": {k: new[k] for k in ("dice", "score", "cases")},
                  "parent_metrics": {k: parent[k] for k in ("dice", "score", "cases")},
                  "made_default": make, "reason": reason}
        record_user_metrics(self.root, self.new_model, record)
        if make:
            select_default_model(self.new_model, self.root, roots=self._roots())
        self._result = RetrainResult(self.new_model, new["tag"], parent["tag"], record["metrics"],
                                     record["parent_metrics"], self.held_out, make, reason, train_s, eval_s)
        self._phase, self._message, self._t_end = "done", f"{new['tag']}: {reason}", now
        self._cleanup_work()

    def _fail(self, error: str) -> None:
        self._phase, self._error, self._message, self._t_end = "failed", error, "Failed", time.perf_counter()
        self._unpin_if_nothing_new()
        self._remove_partial_outputs()
        self._cleanup_work()

    # -- stopping
    def stop(self) -> RetrainStatus:
        """Kills the running child's process tree and removes everything partial. Safe to call twice."""
        with self._lock:
            if self._phase in ("done", "failed", "stopped"):
                return self._status_unlocked()
            if self._proc is not None:
                kill_tree(self._proc)
            self._refresh_progress()
            message = "Stopped; no new version was written"
            finished = self._new_version_dirs()
            if self._phase == "training" and finished:  # killed between save_model's rename and its exit
                message = f"Stopped after the new version {finished[0]} was complete; it is kept but not made default"
            if self._phase == "evaluating":
                message = (f"Stopped during the comparison: the new version {self.new_model} is complete and kept, "
                           "but not evaluated and not made default")
            self._phase, self._message, self._t_end = "stopped", message, time.perf_counter()
            self._unpin_if_nothing_new()
            self._remove_partial_outputs()
            self._cleanup_work()
            return self._status_unlocked()

    def _status_unlocked(self) -> RetrainStatus:
        step, total, loss, val = self._progress
        end = self._t_end or time.perf_counter()
        return RetrainStatus(self._phase, step, total or self.settings.steps, loss, val, self._message,
                             end - (self._t0 or end), self._result, self._error)

    def _new_version_dirs(self) -> list[Path]:
        if not hasattr(self, "family_dir") or not self.family_dir.is_dir():
            return []
        new = set(os.listdir(self.family_dir)) - (self._before or set())
        return sorted(self.family_dir / n for n in new if VERSION_DIR.match(n))

    def _remove_partial_outputs(self) -> None:
        """Hidden temporary folders ``save_model`` started in the family folder, and folders we created."""
        if not hasattr(self, "family_dir"):
            return
        if self.family_dir.is_dir():
            for name in set(os.listdir(self.family_dir)) - (self._before or set()):
                if name.startswith("."):
                    shutil.rmtree(self.family_dir / name, ignore_errors=True)
            if self._before is None and not any(self.family_dir.iterdir()):
                self.family_dir.rmdir()
        if not self._root_existed and self.root.is_dir() and not any(self.root.iterdir()):
            self.root.rmdir()

    def _cleanup_work(self) -> None:
        if self._work is not None and self._work.exists():
            shutil.rmtree(self._work, ignore_errors=True)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None


# ------------------------------------------------------------------------------- child entry point
def _compare_main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m KneeSegmentationLib.learn.retrain")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compare", help="Dice of several models on corrected cases, as JSON")
    c.add_argument("--models", nargs="+", type=Path, required=True)
    c.add_argument("--cases", nargs="+", type=Path, required=True)
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("--device", default="auto")
    c.add_argument("--no-n4", action="store_true")
    a = p.parse_args(argv)
    watch_parent()
    result = compare_on_cases(a.models, a.cases, a.device, n4=not a.no_n4)
    write_text_atomically(a.out, json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(_compare_main())
