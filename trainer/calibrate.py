"""``calibrate``: per-class logit offsets that undo the size bias a model's training loss leaves.

Why: training weights the cross-entropy of the small bones up (fibula 3x, patella 2x) so that they are found at
all; the price is a prior shifted towards them, and on the benchmark knee-bones v4 made the fibula 26 % too
large on average (up to 2x; femur 0 %, patella 5 %). A weighted cross-entropy shifts the optimal logits by
the log of the weight, so a constant offset per class is the natural correction; its size is fitted here rather
than assumed, because the Dice term of the loss pulls the other way.

Fitted on held-out *validation* anatomy only (maps of role ``val``, which also chose the training run's best
step), rendered like the benchmark but with other seeds and contrasts (``CALIBRATION_TAG``), so the benchmark's
test maps never inform it. The pipeline runs once per case with the model's current offsets (N4 included);
its model-grid probabilities are resampled to the acquisition grid once, and each candidate offset is an
argmax of the probabilities scaled by exp(offset) — exactly the softmax of the shifted logits, up to the
per-voxel normalization that the argmax ignores. Coordinate search, ``PASSES`` sweeps over ``OFFSET_GRID``,
each bone's offset chosen for its mean Dice over the cases holding it, the background fixed at 0.

Output: ``calibration.json`` (offsets, Dice per bone before and after, the cases); ``export --calibration``
writes the offsets into the new version's card (``output.logit_offsets``).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from KneeSegmentationLib.constants import BONES
from KneeSegmentationLib.errors import DatasetError
from KneeSegmentationLib.files import read_json_object, write_text_atomically
from KneeSegmentationLib.metrics import dice
from KneeSegmentationLib.models.store import LoadedModel, load_model

from .benchmark import MIN_TRUTH_ML, Case, stable_hash
from .dataset import LabelMap, load_dataset
from .render import CONTRASTS, PLANES, render_case

FORMAT = "kneeseg-calibration/1"
CALIBRATION_TAG = "calibration/1"  # seeds and contrasts differ from the benchmark's (its tag is the version)
OFFSET_GRID = np.round(np.arange(-3.0, 1.0001, 0.125), 3)
PASSES = 2
CALIBRATION_FILE = "calibration.json"


def calibration_cases(maps: list[LabelMap]) -> list[Case]:
    """Every validation map in every plane, each in a contrast other than the benchmark's, with its own seed."""
    chosen = sorted((m for m in maps if m.role == "val"), key=lambda m: m.id)
    if not chosen:
        raise DatasetError("calibration needs maps of role 'val' in the dataset")
    names = list(CONTRASTS)
    return [Case(m.id, m.role, p, names[(stable_hash(m.id) + PLANES.index(p) + 1) % len(names)],
                 stable_hash(f"{CALIBRATION_TAG}:{m.id}:{p}")) for m in chosen for p in PLANES]


@dataclass
class CaseData:
    """One calibration case: log-probabilities on the acquisition grid (inside ``box``) and the truth."""

    id: str
    logp: np.ndarray  # (C, z, y, x) inside box, the model's own offsets removed
    box: tuple
    truth: np.ndarray  # (z, y, x) labels on the acquisition grid
    voxel_ml: float

    def labels(self, offsets: np.ndarray) -> np.ndarray:
        labels = np.zeros(self.truth.shape, np.uint8)
        lo, hi = self.box
        labels[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]] = np.argmax(self.logp + offsets[:, None, None, None], axis=0)
        return labels


def case_data(model: LoadedModel, m: LabelMap, case: Case) -> CaseData:
    """Renders ``case``, runs the full pipeline once (with its default mirrored pass, as users get it) and keeps
    what the offset search needs. The mirrored pass averages two softmaxes, so removing the applied offsets from
    the log of their mean is exact at those offsets and a close approximation around them; the benchmark then
    measures the calibrated model through the pipeline itself."""
    from KneeSegmentationLib.segment.pipeline import SegmentationSettings, run_segmentation
    from KneeSegmentationLib.segment.postprocess import probabilities_on

    image, truth = render_case(m, case.plane, case.contrast, case.seed)
    result = run_segmentation(image, SegmentationSettings(model=model, device="cpu", keep_probabilities=True))
    sub, box = probabilities_on(*result.probabilities, image)
    if sub is None:
        raise DatasetError(f"calibration case {case.id}: the model grid misses the image")
    applied = np.asarray(model.card.plan.logit_offsets or [0.0] * len(sub), np.float32)
    logp = np.log(np.clip(sub, 1e-8, None)) - applied[:, None, None, None]  # fit the total offset
    return CaseData(case.id, logp.astype(np.float32), box, sitk.GetArrayFromImage(truth),
                    float(np.prod(image.GetSpacing())) / 1000)


def mean_dice(data: list[CaseData], offsets: np.ndarray) -> dict[str, float]:
    """Mean Dice per bone over the cases whose truth holds it (at least ``MIN_TRUTH_ML``)."""
    scores: dict[str, list[float]] = {}
    for c in data:
        pred = c.labels(offsets)
        for b in BONES[: len(offsets) - 1]:
            t = c.truth == b.label
            if t.sum() * c.voxel_ml >= MIN_TRUTH_ML:
                scores.setdefault(b.name, []).append(dice(pred == b.label, t))
    return {k: float(np.mean(v)) for k, v in scores.items()}


def fit_offsets(data: list[CaseData], n_classes: int, log=print) -> np.ndarray:
    """Coordinate search of one offset per bone (background 0) for the mean Dice of that bone; ties go to the
    offset nearest 0."""
    offsets = np.zeros(n_classes, np.float32)
    for sweep in range(PASSES):
        for b in BONES[: n_classes - 1]:
            best, best_score = float(offsets[b.label]), -1.0
            for value in OFFSET_GRID:
                trial = offsets.copy()
                trial[b.label] = value
                score = mean_dice(data, trial).get(b.name)
                if score is None:
                    break  # no case holds this bone: its offset stays
                if score > best_score + 1e-6 or (abs(score - best_score) <= 1e-6 and abs(value) < abs(best)):
                    best, best_score = float(value), score
            offsets[b.label] = best
        log(f"sweep {sweep + 1}: offsets {np.round(offsets, 3).tolist()}")
    return offsets


def run_calibration(model: Path | str | LoadedModel, dataset: Path, out_dir: Path, log=print) -> dict:
    """Fits the offsets of ``model`` on the dataset's validation maps; writes ``calibration.json``, returns it."""
    t0 = time.perf_counter()
    model = model if isinstance(model, LoadedModel) else load_model(model)
    maps = {m.id: m for m in load_dataset(Path(dataset), ("val",))}
    cases = calibration_cases(list(maps.values()))
    data = []
    for k, case in enumerate(cases):
        data.append(case_data(model, maps[case.map_id], case))
        log(f"[{k + 1}/{len(cases)}] {case.id} {case.contrast}")
    n_classes = data[0].logp.shape[0]
    offsets = fit_offsets(data, n_classes, log)
    record = {"format": FORMAT, "model": model.card.tag, "dataset": str(dataset), "tag": CALIBRATION_TAG,
              "logit_offsets": [round(float(b), 3) for b in offsets],
              "dice_before": _rounded(mean_dice(data, np.zeros(n_classes, np.float32))),
              "dice_after": _rounded(mean_dice(data, offsets)),
              "cases": [c.id for c in cases], "seconds": round(time.perf_counter() - t0, 1)}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomically(out_dir / CALIBRATION_FILE, json.dumps(record, indent=2) + "\n")
    log(f"logit offsets {record['logit_offsets']}; mean Dice on {len(cases)} validation cases "
        f"{record['dice_before']} -> {record['dice_after']}")
    return record


def _rounded(scores: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in scores.items()}


def load_calibration(path: Path) -> dict:
    """A ``calibration.json`` (or the folder holding it), checked for its format and offsets."""
    path = Path(path)
    path = path / CALIBRATION_FILE if path.is_dir() else path
    record = read_json_object(path, DatasetError, "calibration")
    if record.get("format") != FORMAT or not isinstance(record.get("logit_offsets"), list):
        raise DatasetError(f"{path} is not a calibration record ({FORMAT})")
    return record
