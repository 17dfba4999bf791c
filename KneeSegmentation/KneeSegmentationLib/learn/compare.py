"""Retraining's measurement: which corrected cases are held out, both models segmenting them, the per-bone Dice
recorded in ``user_metrics.json`` beside each other, and whether the new version becomes the default. No Qt; torch
only inside ``compare_on_cases`` (run in the comparison child), whose scoring is ``scoring.score_cases``, the
same as the trainer's evaluation of corrected cases.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from ..constants import BONES
from ..files import write_text_atomically
from ..paths import user_models_root
from .scoring import read_case_for_scoring, score_cases

USER_METRICS_FILE = "user_metrics.json"
HOLDOUT_EVERY = 4  # every 4th case (by name) is held out for the comparison; at least one if there are two


def split_cases(case_dirs: list[Path], holdout: bool) -> tuple[list[Path], list[Path], bool]:
    """(train, evaluate, held_out). Every HOLDOUT_EVERY-th case (by name, starting with the last) is held
    out; one case alone is trained on and evaluated on (not held out: reported as such)."""
    case_dirs = sorted(case_dirs)
    if not holdout or len(case_dirs) < 2:
        return case_dirs, case_dirs, False
    held = {case_dirs[i] for i in range(len(case_dirs) - 1, -1, -HOLDOUT_EVERY)}
    return [c for c in case_dirs if c not in held], sorted(held), True



def compare_on_cases(models: Sequence[Path], case_dirs: Sequence[Path], device: str = "auto",
                     n4: bool = True) -> list[dict]:
    """Each model segments each case and is scored against the case's labels (``scoring.score_cases``: the
    module's pipeline, Dice per bone present in the labels). Returns one summary per model: Dice per case and
    bone (4 decimals), their mean per bone and the mean over the bones (``score``)."""
    import numpy as np

    from ..models.store import load_model

    cases = [read_case_for_scoring(c) for c in case_dirs]
    out = []
    for model in models:
        loaded = load_model(model)
        per_bone: dict[str, list[float]] = {b.name: [] for b in BONES}
        per_case = []
        for scored in score_cases(loaded, cases, device, n4):
            row = {"case": scored.case, **{bone: round(m["dice"], 4) for bone, m in scored.bones.items()}}
            for bone in scored.bones:
                per_bone[bone].append(row[bone])
            per_case.append(row)
        means = {k: round(float(np.mean(v)), 4) for k, v in per_bone.items() if v}
        out.append({"model": str(model), "tag": loaded.card.tag, "dice": means,
                    "score": round(float(np.mean(list(means.values()))), 4) if means else 0.0, "cases": per_case})
    return out


def read_user_metrics(root: Path | None = None) -> dict:
    """``{model path: record}`` of every retrained model's comparison on the user's cases."""
    path = Path(root or user_models_root()) / USER_METRICS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def user_metrics_for(model_dir: Path, root: Path | None = None) -> dict | None:
    """The comparison recorded for ``model_dir`` (for the version picker), or None."""
    return read_user_metrics(root).get(str(Path(model_dir).resolve()))


def record_user_metrics(root: Path, model_dir: Path, record: dict) -> None:
    """Adds one record to ``user_metrics.json`` (temp file + rename; earlier records are kept)."""
    data = read_user_metrics(root)
    data[str(Path(model_dir).resolve())] = record
    write_text_atomically(Path(root) / USER_METRICS_FILE, json.dumps(data, indent=2) + "\n")


def decide_default(new: dict, parent: dict, held_out: bool, make_default: str) -> tuple[bool, str]:
    if make_default == "yes":
        return True, "made default as requested"
    if make_default == "no":
        return False, "kept the previous default as requested"
    if not held_out:
        return False, ("kept the previous default: with a single case there is no held-out case to show the new "
                       "version is better; select it yourself if you want it")
    if new["score"] > parent["score"]:
        return True, f"better on held-out cases (mean Dice {new['score']:.3f} vs {parent['score']:.3f})"
    return False, f"not better on held-out cases (mean Dice {new['score']:.3f} vs {parent['score']:.3f})"
