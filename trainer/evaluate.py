"""``evaluate``: how good a model is, per case and per bone, written as CSV + PNG + ``metrics.json``.

Three kinds of evidence:
1. Held-out label maps rendered with fixed (seeded) random contrasts on the model grid, the full inference
   window around the knee joint: Dice, HD95, mean surface distance (mm), volume error, and the expected
   calibration error (over the voxels inside the image). Femur/Tibia are held out as anatomy (the ``val``
   maps); the Fibula exists in one map only, which is also a training map: its figures measure unseen
   contrasts and deformations, not unseen anatomy.
2. Corrected cases (if given): the whole pipeline (``run_segmentation``) in the case's own geometry, scored by
   ``KneeSegmentationLib.learn.scoring`` like retraining's comparison (plus surface distances and volume error).
3. The real multi-echo series (no labels): the pipeline on each echo; the same bones must come out at every
   echo (pairwise Dice per bone), plus a PNG of the result at every echo to look at.
"""
from __future__ import annotations

import csv
import itertools
import json
import math
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from KneeSegmentationLib.constants import BONES
from KneeSegmentationLib.errors import DatasetError
from KneeSegmentationLib.files import write_text_atomically
from KneeSegmentationLib.segment.infer import predict_probabilities
from KneeSegmentationLib.metrics import bone_metrics, dice, expected_calibration_error
from KneeSegmentationLib.models.store import LoadedModel, load_model
from KneeSegmentationLib.learn.scoring import ScoringCase, score_cases

from .dataset import load_dataset
from .generator import Generator, Sample
from .runfolder import best_model

CASE_OFFSET_MM = 10.0  # rendered cases: window centred within ±this of the joint centre (like the pipeline)
METRIC_NAMES = ("dice", "hd95_mm", "msd_mm", "volume_error", "ece")


def rendered_cases(maps, model: LoadedModel, n: int, seed: int) -> list[Sample]:
    """``n`` cases per evaluated map (val maps, and the fibula map), fixed by ``seed``."""
    pre = model.card.preprocessing
    generator = Generator(maps, pre.spacing_mm, tuple(pre.patch_size), pre.normalization)
    rng, gen = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    chosen = [i for i, m in enumerate(maps) if m.role == "val" or m.has_fibula]
    out = []
    for i in chosen:
        for _ in range(n):
            center = maps[i].joint_center + rng.uniform(-CASE_OFFSET_MM, CASE_OFFSET_MM, 3)
            out.append(generator.sample(rng, gen, map_index=i, center=center))
    return out


def evaluate_rendered(model: LoadedModel, samples: list[Sample]) -> tuple[list[dict], list[np.ndarray]]:
    rows, preds = [], []
    spacing = model.card.preprocessing.spacing_mm[::-1]
    for k, s in enumerate(samples):
        prob, _, _ = predict_probabilities(model.network, s.image, model.card.preprocessing.patch_size,
                                           torch.device("cpu"))
        inside = s.inside if s.inside is not None else np.ones(s.target.shape, bool)
        pred = np.argmax(prob, axis=0) * inside
        preds.append(pred)
        ece = expected_calibration_error(prob[:, inside], s.target[inside])
        for b in BONES:
            if not (s.target == b.label).any():
                continue
            rows.append({"source": "rendered", "case": f"{s.map_id}#{k}", "map": s.map_id, "bone": b.name,
                         **bone_metrics(pred, s.target, spacing, b.label), "ece": ece,
                         "contrast": json.dumps(s.params)})
    return rows, preds


def evaluate_cases(model: LoadedModel, cases_dir: Path) -> list[dict]:
    """The corrected cases (checked by ``load_cases``) scored as retraining scores them (``score_cases``), with
    the surface distances and volume error too; one row per case and bone."""
    from .cases import load_cases

    cases = [ScoringCase(c.id, c.image, sitk.GetArrayFromImage(c.label)) for c in load_cases(cases_dir)]
    return [{"source": "corrected case", "case": s.case, "map": s.case, "bone": bone, **m, "ece": math.nan}
            for s in score_cases(model, cases, device="cpu", n4=True, surface=True) for bone, m in s.bones.items()]


def echo_consistency(model: LoadedModel, dicom_dir: Path, out_dir: Path, max_echoes: int = 0,
                     tta: bool | None = None) -> dict:
    """Pipeline on every echo of the real series; pairwise Dice per bone, volumes, and a PNG."""
    from KneeSegmentationLib.segment.io import list_echoes, read_image
    from KneeSegmentationLib.segment.pipeline import SegmentationSettings, run_segmentation

    echoes = list_echoes(dicom_dir)
    if max_echoes:
        echoes = echoes[:max_echoes]
    images, labels, seconds = [], [], []
    for k in range(len(echoes)):
        image = read_image(dicom_dir, echo=k)
        result = run_segmentation(image, SegmentationSettings(model=model, device="cpu", tta=tta))
        images.append(sitk.GetArrayFromImage(image))
        labels.append(sitk.GetArrayFromImage(result.labelmap))
        seconds.append(round(sum(result.timings.values()), 2))
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000
    summary: dict = {"echo_times_ms": echoes, "seconds_per_echo": seconds}
    rows = []
    for b in BONES:
        vols = [float((lab == b.label).sum() * voxel_ml) for lab in labels]
        pair = [dice(labels[i] == b.label, labels[j] == b.label) for i, j in itertools.combinations(range(len(labels)), 2)]
        summary[b.name] = {"volume_ml": [round(v, 1) for v in vols],
                           "pairwise_dice_min": min(pair) if pair else math.nan,
                           "pairwise_dice_mean": float(np.mean(pair)) if pair else math.nan}
        rows += [{"echo": k, "te_ms": te, "bone": b.name, "volume_ml": v} for k, (te, v) in enumerate(zip(echoes, vols))]
    _write_csv(out_dir / "echo_volumes.csv", rows)
    summary["png"] = str(draw_echoes(images, labels, echoes, out_dir / "echoes.png"))
    return summary


def draw_echoes(images: list[np.ndarray], labels: list[np.ndarray], echoes: list[float], path: Path) -> Path:
    """One row per echo: the sagittal slices with the most femur/tibia and the most fibula, bones outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = labels[0]
    counts = [(ref[z] == 1).sum() + (ref[z] == 2).sum() for z in range(ref.shape[0])]
    fib = [(ref[z] == 3).sum() for z in range(ref.shape[0])]
    slices = [int(np.argmax(counts))] + ([int(np.argmax(fib))] if max(fib) > 0 else [])
    fig, axes = plt.subplots(len(images), len(slices), figsize=(3 * len(slices), 3 * len(images)), squeeze=False)
    for row, img, lab, te in zip(axes, images, labels, echoes):
        for ax, z in zip(row, slices):
            sl = img[z]
            ax.imshow(sl, cmap="gray", vmin=0, vmax=np.percentile(img, 99.5))
            for b in BONES:
                if (lab[z] == b.label).any():
                    ax.contour(lab[z] == b.label, levels=[0.5], colors=[b.color], linewidths=0.8)
            ax.set_title(f"TE {te:g} ms, slice {z}", fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, columns)
        w.writeheader()
        w.writerows(rows)


def summarize(rows: list[dict]) -> dict:
    """Mean (and min Dice) per (map, bone)."""
    out: dict = {}
    for (m, bone) in dict.fromkeys((r["map"], r["bone"]) for r in rows):
        sel = [r for r in rows if r["map"] == m and r["bone"] == bone]
        entry = {name: float(np.mean([r[name] for r in sel])) for name in METRIC_NAMES}
        entry["dice_min"] = float(min(r["dice"] for r in sel))
        entry["n"] = len(sel)
        out.setdefault(m, {})[bone] = {k: (round(v, 4) if isinstance(v, float) and math.isfinite(v) else v)
                                      for k, v in entry.items()}
    return out


def plot_dice(rows: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys((r["map"], r["bone"]) for r in rows))
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(groups)), 3.5))
    data = [[r["dice"] for r in rows if (r["map"], r["bone"]) == g] for g in groups]
    ax.boxplot(data)
    ax.set_xticks(range(1, len(groups) + 1), [f"{m}\n{b}" for m, b in groups], fontsize=7)
    ax.set(ylabel="Dice", ylim=(0, 1), title="Dice per map and bone")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def evaluate(model_path: Path | None, dataset: Path, out_dir: Path, run: Path | None = None,
             cases: Path | None = None, n_cases: int = 4, seed: int = 7, echoes: bool = True,
             data: Path | None = None, max_echoes: int = 0, log=print) -> dict:
    """Runs the evaluation and writes ``out_dir``: cases.csv, dice.png, previews.png, echoes, metrics.json."""
    if (model_path is None) == (run is None):
        raise DatasetError("evaluate needs exactly one of --model (a model folder) or --run-dir (a run folder)")
    model = best_model(run) if run is not None else load_model(model_path)  # before export: the run's best.pt
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    maps = load_dataset(Path(dataset))
    samples = rendered_cases(maps, model, n_cases, seed)
    rows, preds = evaluate_rendered(model, samples)
    if cases is not None:
        rows += evaluate_cases(model, Path(cases))
    _write_csv(out_dir / "cases.csv", rows)
    plot_dice(rows, out_dir / "dice.png")
    from .preview import draw_samples

    shown = [Sample(s.image, p, f"{s.map_id} prediction", s.params) for s, p in zip(samples, preds)]
    draw_samples([x for pair in zip(samples[::n_cases], shown[::n_cases]) for x in pair], out_dir / "previews.png",
                 "rendered held-out cases: truth / prediction")
    metrics: dict = {"rendered": summarize([r for r in rows if r["source"] == "rendered"]),
                     "evaluation": {"seed": seed, "cases_per_map": n_cases, "grid": "model grid, full window",
                                    "ece": "over voxels inside the image, 10 bins"}}
    if cases is not None:
        metrics["corrected_cases"] = summarize([r for r in rows if r["source"] == "corrected case"])
    if echoes:
        if data is None:
            from .mskt import fetch_mskt

            data = fetch_mskt()
        metrics["echo_consistency"] = echo_consistency(model, Path(data) / "MESE_T2_dicom_data_anon", out_dir,
                                                       max_echoes)
    write_text_atomically(out_dir / "metrics.json", json.dumps(metrics, indent=2, default=float) + "\n")
    log(json.dumps(metrics, indent=2, default=float))
    return metrics
