"""What a retraining is asked to do and what it reports: settings, status, result, and the progress read from
the trainer's run folder (``learn/contract.py``'s file names) and a failed child's log. Used by ``learn/retrain.py``'s
job, the CLI and the module's panel; no Qt, no torch.
"""
from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from .children import default_python
from .contract import CONFIG_FILE, TRAIN_LOG, VAL_LOG

PHASES = ("starting", "training", "evaluating", "done", "failed", "stopped")


@dataclass
class RetrainSettings:
    """What a retraining should do; the CLI and the module's panel fill it."""

    model: Path | None = None  # parent model version folder; None = the current default model
    cases: Path | None = None  # dataset of corrected cases; None = paths.training_cases_dir()
    synthetic: Path | None = None  # trainer's synthesis dataset; None = paths.synthetic_dataset_dir()
    root: Path | None = None  # models root for the new version; None = paths.user_models_root()
    steps: int = 200
    holdout: bool = True  # hold out every HOLDOUT_EVERY-th case (at least one of two) for the comparison
    make_default: str = "auto"  # "auto": only if better on held-out cases; "yes"; "no"
    device: str = "auto"  # for the comparison
    n4: bool = True  # the comparison segments like the module does by default
    trainer_args: tuple[str, ...] = ()  # extra ``trainer finetune`` options, e.g. ("--steps", "400")
    python: str = field(default_factory=lambda: default_python())


@dataclass(frozen=True)
class RetrainResult:
    model: Path
    tag: str
    parent: str
    metrics: dict  # the new model on the evaluation cases: {"dice": {bone: mean}, "score": mean, ...}
    parent_metrics: dict
    held_out: bool  # False when the evaluation cases were also trained on (a single case)
    made_default: bool
    reason: str
    train_s: float
    evaluate_s: float


@dataclass(frozen=True)
class RetrainStatus:
    phase: str
    step: int
    total_steps: int
    loss: list[tuple[int, float]]  # (step, training loss)
    validation: list[tuple[int, dict]]  # (step, {"score": …, "dice_femur": …, …}) on synthetic validation
    message: str
    elapsed_s: float
    result: RetrainResult | None = None
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.phase in ("done", "failed", "stopped")

    @property
    def fraction(self) -> float:
        if self.phase == "done":
            return 1.0
        return 0.9 * min(1.0, self.step / self.total_steps) if self.total_steps else 0.0


# ------------------------------------------------------------------------------------------- progress
def read_csv_rows(path: Path) -> list[dict]:
    """Complete rows of a CSV the child is appending to (a half-written last line is skipped)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return []
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    return list(csv.DictReader(text.splitlines()))


def _float(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def read_progress(run_dir: Path) -> tuple[int, int, list[tuple[int, float]], list[tuple[int, dict]]]:
    """(step, total steps, loss curve, validation curve) from a trainer run folder."""
    total = 0
    try:
        total = int(json.loads((run_dir / CONFIG_FILE).read_text(encoding="utf-8"))["steps"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    loss = [(int(r["step"]), f) for r in read_csv_rows(run_dir / TRAIN_LOG) if (f := _float(r.get("loss"))) is not None]
    val = []
    for r in read_csv_rows(run_dir / VAL_LOG):
        values = {k: f for k, v in r.items() if k != "step" and (f := _float(v)) is not None}
        if "score" in values:
            val.append((int(r["step"]), values))
    step = max([s for s, _ in loss] + [s for s, _ in val] + [0])
    return step, total, loss, val



def failure_reason(log: str) -> str:
    """The line of a child's log that says why it failed: the last exception or error line, else the last line."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    for line in reversed(lines):
        if re.search(r"(Error|Exception|error:|Killed)", line) and not line.startswith("File "):
            return line[:300]
    return lines[-1][:300] if lines else "no output"
