"""A training run's folder and the files in it: checkpoints, logs and the curves plot.

The file names are ``KneeSegmentationLib/learn/contract.py``'s (retraining reads the same folder).
``run_dir`` holds ``config.json``, ``last.pt`` (exact resume: model, optimizer, scheduler, AMP scaler, step,
best score and every rank's RNG state), ``best.pt`` (weights with the best validation score), ``train.csv``,
``val.csv`` and ``curves.png``. Checkpoints are written atomically (a temporary file, then a rename), so a
killed run resumes from the last one, and hold only tensors, numbers and RNG states, so they load with
``torch.load(weights_only=True)``. After a resume the logs are cut back to the checkpoint's step, so they
match the restored state. Creating a file named ``STOP`` in the folder ends the run cleanly at the next step.
``result.json`` is written (atomically) when the run is over. ``best_model`` reads ``best.pt`` back into the
network of the run's plan (``config.json``), for ``evaluate`` and ``export``.
"""
from __future__ import annotations

import csv
import os
import random
from pathlib import Path

import numpy as np
import torch

from KneeSegmentationLib.constants import BONES
from KneeSegmentationLib.errors import DatasetError
from KneeSegmentationLib.models.card import ModelCard
from KneeSegmentationLib.models.store import LoadedModel, state_mismatch
from KneeSegmentationLib.models.network import build_network
from KneeSegmentationLib.learn.contract import BEST, CONFIG_FILE, LAST, RESULT_FILE, STOP_FILE, TRAIN_LOG, VAL_LOG

from .config import TrainConfig

__all__ = ["BEST", "CONFIG_FILE", "LAST", "RESULT_FILE", "STOP_FILE", "TRAIN_LOG", "VAL_LOG", "TRAIN_COLUMNS",
           "VAL_COLUMNS", "rng_state", "set_rng_state", "atomic_save", "load_checkpoint", "best_model", "rewrite_csv",
           "append_csv", "plot_curves"]

TRAIN_COLUMNS = ["step", "elapsed_s", "lr", "loss", "ce", "dice_loss", "s_per_step"]
VAL_COLUMNS = ["step", *(f"dice_{b.name.lower()}" for b in BONES), "score"]


# ------------------------------------------------------------------------------------------ rng state
def rng_state(rng: np.random.Generator, gen: torch.Generator) -> dict:
    return {"numpy": rng.bit_generator.state, "torch_gen": gen.get_state(), "torch": torch.get_rng_state(),
            "python": random.getstate()}


def set_rng_state(state: dict, rng: np.random.Generator, gen: torch.Generator) -> None:
    rng.bit_generator.state = state["numpy"]
    gen.set_state(state["torch_gen"])
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])


# ---------------------------------------------------------------------------------------- checkpoints
def atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    # Tensors, numbers and RNG states only: loads without unpickling arbitrary objects.
    return torch.load(path, map_location="cpu", weights_only=True)


def best_model(run_dir: Path, checkpoint: str = BEST) -> LoadedModel:
    """``best.pt`` of a run folder in the network of the run's plan (``config.json``): the model ``evaluate``
    measures and ``export`` writes (its card, named "run", holds only the plan). Weights that do not fit the
    plan are refused (``DatasetError``) rather than fitted to a network read off the weights.
    ``checkpoint=LAST`` takes the weights of the last step instead (see ``export``'s ``weights``)."""
    run_dir = Path(run_dir)
    if checkpoint not in (BEST, LAST):
        raise ValueError(f"checkpoint must be {BEST} or {LAST}, not {checkpoint!r}")
    for name in (checkpoint, CONFIG_FILE):
        if not (run_dir / name).is_file():
            raise DatasetError(f"{run_dir} is not a finished training run (no {name})")
    plan = TrainConfig.load(run_dir / CONFIG_FILE).plan()
    state = load_checkpoint(run_dir / checkpoint)["model"]
    net = build_network(plan)
    why = state_mismatch(net.state_dict(), state)
    if why:
        raise DatasetError(f"{run_dir / checkpoint} does not fit the network of the run's {CONFIG_FILE}: {why}")
    net.load_state_dict(state)
    return LoadedModel(ModelCard(name="run", version=0, plan=plan), net.eval(), run_dir)


# ---------------------------------------------------------------------------------------------- logs
def rewrite_csv(path: Path, columns: list[str], keep_until: int) -> None:
    """After a resume: drop log rows written after the checkpoint, so the logs match the restored state."""
    if not path.is_file():
        with open(path, "w", newline="") as f:
            csv.writer(f).writerow(columns)
        return
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["step"]) <= keep_until]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, columns)
        w.writeheader()
        w.writerows(rows)


def append_csv(path: Path, columns: list[str], row: dict) -> None:
    with open(path, "a", newline="") as f:
        csv.DictWriter(f, columns, extrasaction="ignore").writerow(row)


def plot_curves(run_dir: Path) -> Path:
    """``curves.png``: training loss and validation Dice per bone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def read(p):
        if not p.is_file():
            return []
        with open(p, newline="") as f:
            return list(csv.DictReader(f))

    tr, va = read(run_dir / TRAIN_LOG), read(run_dir / VAL_LOG)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    if tr:
        a.plot([int(r["step"]) for r in tr], [float(r["loss"]) for r in tr], lw=0.8)
    a.set(xlabel="step", ylabel="loss (Dice + CE)", title="training loss")
    for bone in BONES:
        key = f"dice_{bone.name.lower()}"
        pts = [(int(r["step"]), float(r[key])) for r in va if r.get(key) not in (None, "", "nan")]
        if pts:
            b.plot(*zip(*pts), marker="o", ms=3, color=bone.color, label=bone.name)
    b.set(xlabel="step", ylabel="Dice", title="validation Dice", ylim=(0, 1))
    b.legend(loc="lower right")
    fig.tight_layout()
    out = run_dir / "curves.png"
    tmp = run_dir / ".curves.tmp.png"
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, out)
    return out


