"""The contract between the trainer and retraining: a training run folder's file names and its ``result.json``.

Both sides import these names from here (``trainer/runfolder.py``, ``trainer/train.py``,
``trainer/finetune.py`` write; ``learn/retrain.py`` reads), so that neither has to know how the other spells them.
No Qt, no torch: the module's GUI reads progress from a run folder before torch is installed.

- ``config.json``: the run's settings (``steps`` is the total a progress bar needs);
- ``train.csv`` (step, loss, …) and ``val.csv`` (step, Dice per bone, score), appended to while it runs;
- ``last.pt`` (exact resume) and ``best.pt`` (best validation weights);
- ``STOP``: created by anyone, ends the run cleanly at the next step;
- ``result.json``: written atomically once the run is over, ``{"model": path or null, "version": tag or null,
  "steps": n, …}``; ``model`` is the version folder a fine-tuning wrote (``null`` after a plain training,
  whose model is exported later). A reader never has to parse what the trainer printed.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..files import write_text_atomically

CONFIG_FILE = "config.json"
TRAIN_LOG = "train.csv"
VAL_LOG = "val.csv"
LAST = "last.pt"
BEST = "best.pt"
STOP_FILE = "STOP"
RESULT_FILE = "result.json"


def write_result(run_dir: Path, model: Path | None, version: str | None, steps: int, **extra) -> Path:
    """Writes ``run_dir/result.json`` (temporary file + rename: a reader sees all of it or nothing)."""
    record = {"model": str(Path(model).resolve()) if model is not None else None, "version": version,
              "steps": int(steps), **extra}
    return write_text_atomically(Path(run_dir) / RESULT_FILE, json.dumps(record, indent=2, default=str) + "\n")


def read_result(run_dir: Path) -> dict | None:
    """The run's ``result.json`` as a dict, or None while the run has not finished (or it is unreadable)."""
    try:
        data = json.loads((Path(run_dir) / RESULT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def clear_result(run_dir: Path) -> None:
    """Removes a previous run's ``result.json`` when a run (re)starts, so that it never describes this one."""
    try:
        (Path(run_dir) / RESULT_FILE).unlink()
    except FileNotFoundError:
        pass
