"""``benchmark``: the one fixed benchmark on which model versions are compared.

Held-out anatomy only: every map of role ``val`` or ``test`` in the dataset (the real T2-label map and the
held-out shape-model knees). Each map is rendered (``render.py``) like a clinical 2D knee protocol in the
sagittal, coronal and axial plane (thick slices along the plane's normal, 0.4–0.6 mm in plane over a 150–160 mm
field of view around the knee joint, a few degrees oblique), in one of three named contrasts with fixed tissue
intensities, with a smooth bias field and Rician noise, every random choice fixed by a seed derived from
(map id, plane).
The model runs through the FULL pipeline (``run_segmentation`` with N4) and is scored on the ACQUISITION
grid, with its spacing, against the generation labels sampled at the acquisition voxel centres:

- per case and per bone present in the truth (at least ``MIN_TRUTH_ML``): Dice, HD95 and mean surface
  distance in mm (``KneeSegmentationLib.metrics``). A bone present in the truth but not predicted at all gets
  Dice 0 and HD95 = MSD = nan in the CSV; it is counted as ``missed`` in the summary, whose distance means are
  over the cases where the bone was found (read them together with ``missed``);
- the echo consistency of the real multi-echo series (``evaluate.echo_consistency``).

Outputs (all written atomically): ``benchmark.csv`` (one row per case x bone), ``summary.json``,
``benchmark.png`` (a few cases' slices with truth and prediction outlines, Dice per bone), and with echoes
``echo_volumes.csv``/``echoes.png``. ``compare(a, b)`` tells whether summary ``b`` beats ``a`` on every bone.

Changing anything that changes the rendered cases (protocols, contrasts, seeds) must bump
``BENCHMARK_VERSION``: summaries of different versions are not comparable and ``compare`` refuses them.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from KneeSegmentationLib.constants import BONES
from KneeSegmentationLib.errors import DatasetError
from KneeSegmentationLib.files import write_atomically, write_text_atomically
from KneeSegmentationLib.metrics import dice, hd95, mean_surface_distance
from KneeSegmentationLib.models.store import LoadedModel, load_model

from .dataset import LabelMap, load_dataset
from .render import CONTRASTS, PLANES, render_case

BENCHMARK_VERSION = "kneeseg-benchmark/2"  # 2: HD95 as the larger directed 95th percentile
DEFAULT_DATASET = Path("runs/dataset3")
ROLES = ("val", "test")  # held-out maps only, in this order
CSV_COLUMNS = ("model", "case", "map", "role", "plane", "contrast", "seed", "bone", "dice", "hd95_mm", "msd_mm",
               "truth_ml", "pred_ml", "seconds")
MIN_TRUTH_ML = 0.5  # a bone with less truth than this inside the acquisition (a sliver at the edge) is not scored


def stable_hash(text: str) -> int:
    """A 32-bit number fixed by ``text`` on every machine and Python (``hash()`` is salted per process): the
    seeds and contrasts of the benchmark's and the calibration's cases."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


# --- Case plan -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    map_id: str
    role: str
    plane: str
    contrast: str
    seed: int

    @property
    def id(self) -> str:
        return f"{self.map_id}/{self.plane}"


def case_for(m: LabelMap, plane: str) -> Case:
    """The fixed case of (map, plane): contrasts rotate over the planes from a per-map offset, so every map is
    seen in every contrast and every plane in several contrasts; the seed depends on (map id, plane) only."""
    names = list(CONTRASTS)
    contrast = names[(stable_hash(m.id) + PLANES.index(plane)) % len(names)]
    return Case(m.id, m.role, plane, contrast, stable_hash(f"{BENCHMARK_VERSION}:{m.id}:{plane}"))


def held_out_maps(maps: list[LabelMap]) -> list[LabelMap]:
    """Maps of role val/test, real and shape-model alike, in a fixed order (role, then id)."""
    chosen = [m for m in maps if m.role in ROLES]
    return sorted(chosen, key=lambda m: (ROLES.index(m.role), m.id))


def case_plan(maps: list[LabelMap], cases: str = "all") -> list[Case]:
    """``all``: every (held-out map, plane); ``quick``: 3 cases, one per plane and one per contrast."""
    maps = held_out_maps(maps)
    if not maps:
        raise DatasetError("the benchmark needs maps of role 'val' or 'test'")
    if cases == "all":
        return [case_for(m, p) for m in maps for p in PLANES]
    if cases == "quick":  # each plane once, each contrast once, on different maps where the dataset allows
        names, quick = list(CONTRASTS), []
        for j, p in enumerate(PLANES):
            options = [case_for(maps[(j + i) % len(maps)], p) for i in range(len(maps))]
            quick.append(next((c for c in options if c.contrast == names[j % len(names)]), options[0]))
        return quick
    raise ValueError(f"cases must be 'all' or 'quick', not {cases!r}")


# --- Scoring ---------------------------------------------------------------------------------------------------
def score_case(pred: np.ndarray, truth: np.ndarray, spacing_xyz) -> list[dict]:
    """Metrics per bone present in ``truth`` (``MIN_TRUTH_ML``) on the acquisition grid."""
    spacing_zyx = tuple(float(s) for s in spacing_xyz)[::-1]
    voxel_ml = float(np.prod(spacing_xyz)) / 1000
    rows = []
    for b in BONES:
        t, p = truth == b.label, pred == b.label
        truth_ml = float(t.sum()) * voxel_ml
        if truth_ml < MIN_TRUTH_ML:
            continue
        found = bool(p.any())
        rows.append({"bone": b.name, "dice": dice(p, t),
                     "hd95_mm": hd95(p, t, spacing_zyx) if found else math.nan,
                     "msd_mm": mean_surface_distance(p, t, spacing_zyx) if found else math.nan,
                     "truth_ml": round(truth_ml, 2), "pred_ml": round(float(p.sum()) * voxel_ml, 2), "found": found})
    return rows


def _finite_mean(values) -> float:
    v = [x for x in values if math.isfinite(x)]
    return float(np.mean(v)) if v else math.nan


def _stats(rows: list[dict]) -> dict:
    d = [r["dice"] for r in rows]
    return {"dice_mean": float(np.mean(d)), "dice_min": float(min(d)), "dice_median": float(np.median(d)),
            "hd95_mm_mean": _finite_mean(r["hd95_mm"] for r in rows),
            "msd_mm_mean": _finite_mean(r["msd_mm"] for r in rows),
            "n": len(rows), "missed": sum(1 for r in rows if not r["found"])}


def _rounded(x):
    if isinstance(x, float):
        return round(x, 4) if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_rounded(v) for v in x]
    return x


def summarize(rows: list[dict]) -> dict:
    """Per bone over all cases, and mean Dice per bone by role, plane and contrast."""
    bones = [b.name for b in BONES if any(r["bone"] == b.name for r in rows)]
    out: dict = {"bones": {b: _stats([r for r in rows if r["bone"] == b]) for b in bones}}
    for key in ("role", "plane", "contrast"):
        out[f"dice_by_{key}"] = {
            value: {b: float(np.mean([r["dice"] for r in rows if r[key] == value and r["bone"] == b]))
                    for b in bones if any(r[key] == value and r["bone"] == b for r in rows)}
            for value in dict.fromkeys(r[key] for r in rows)}
    return out


def compare(summary_a: dict, summary_b: dict) -> bool:
    """True if ``summary_b`` beats ``summary_a`` on every bone: a strictly higher mean Dice per bone (a tie,
    e.g. 0 vs 0 for a bone neither model predicts, is not a win). Raises ``ValueError`` for summaries of
    different benchmark versions, case plans or mirrored passes (``tta``; absent in older ones: off), which are
    not comparable."""
    for key in ("benchmark", "cases"):
        if summary_a.get(key) != summary_b.get(key):
            raise ValueError(f"benchmark summaries differ in {key!r}; they are not comparable")
    if bool(summary_a.get("tta")) != bool(summary_b.get("tta")):
        raise ValueError("one benchmark ran with the mirrored pass and the other without; they are not comparable")
    plan = lambda s: [(c["case"], c["seed"], c["contrast"]) for c in s.get("plan", [])]  # noqa: E731
    if plan(summary_a) != plan(summary_b):
        raise ValueError("benchmark summaries have different case plans (other dataset?); they are not comparable")
    a, b = summary_a["bones"], summary_b["bones"]
    if set(a) != set(b) or not a:
        raise ValueError(f"benchmark summaries score different bones ({sorted(a)} vs {sorted(b)})")
    return all(b[name]["dice_mean"] > a[name]["dice_mean"] for name in a)


def summary_line(summary: dict) -> str:
    bones = summary["bones"]
    names = list(bones)
    fmt = lambda key, spec: " / ".join(format(bones[n][key], spec) if bones[n][key] is not None else "nan"  # noqa: E731
                                       for n in names)
    mirrored = " with mirror TTA" if summary.get("tta") else ""
    line = (f"{summary['model']}{mirrored} benchmark ({summary['n_cases']} cases): "
            f"{' / '.join(n + ' ' + format(bones[n]['dice_mean'], '.3f') for n in names)} Dice "
            f"(min {fmt('dice_min', '.3f')}), HD95 {fmt('hd95_mm_mean', '.1f')} mm, MSD {fmt('msd_mm_mean', '.2f')} mm")
    missed = [f"{n} {bones[n]['missed']}/{bones[n]['n']}" for n in names if bones[n]["missed"]]
    if missed:
        line += f"; missed {', '.join(missed)}"
    echo = summary.get("echo_consistency")
    if echo:
        def echo_text(name: str) -> str:  # a bone found at no echo is "none", not a perfect 1.000
            v = echo[name]
            if not any(echo[name].get("volume_ml") or [0]):
                return f"{name} none"
            return f"{name} {v['pairwise_dice_min']:.3f}" if v["pairwise_dice_min"] is not None else f"{name} nan"

        line += ("; echo consistency " + " / ".join(echo_text(b.name) for b in BONES if b.name in echo)
                 + " (min pairwise Dice)")
    return line + f"; {summary['seconds']:.0f} s"


# --- Outputs ---------------------------------------------------------------------------------------------------
def _csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def _best_slice(truth: np.ndarray) -> int:
    counts = (truth > 0).reshape(truth.shape[0], -1).sum(axis=1)
    return int(np.argmax(counts)) if counts.any() else truth.shape[0] // 2


def draw(shown: list[tuple[Case, np.ndarray, np.ndarray, np.ndarray]], rows: list[dict], path: Path,
         title: str) -> Path:
    """A grid of case slices (truth solid, prediction dashed) and a Dice box plot per bone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = 3
    nrows = (len(shown) + ncols - 1) // ncols + 1
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.3 * ncols, 3.3 * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (case, img, truth, pred) in zip(axes.ravel(), shown):
        ax.imshow(img, cmap="gray", vmin=0, vmax=float(np.percentile(img, 99.5)) or 1.0)
        for b in BONES:
            if (truth == b.label).any():
                ax.contour(truth == b.label, levels=[0.5], colors=[b.color], linewidths=0.9)
            if (pred == b.label).any():
                ax.contour(pred == b.label, levels=[0.5], colors=[b.color], linewidths=0.9, linestyles="dashed")
        ax.set_title(f"{case.id} {case.contrast}", fontsize=7)
    box = fig.add_subplot(nrows, 1, nrows)
    names = [b.name for b in BONES if any(r["bone"] == b.name for r in rows)]
    box.boxplot([[r["dice"] for r in rows if r["bone"] == n] for n in names])
    box.set_xticks(range(1, len(names) + 1), names)
    box.set(ylabel="Dice", ylim=(0, 1), title="Dice per bone over the cases (outlines: truth solid, prediction dashed)")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=80, format="png"), suffix=".png")
    plt.close(fig)
    return path


def run_benchmark(model: Path | str | LoadedModel, out_dir: Path, dataset: Path = DEFAULT_DATASET,
                  cases: str = "all", echoes: bool = True, data: Path | None = None, tta: bool | None = None,
                  log=print) -> dict:
    """Runs the benchmark, writes ``out_dir`` (see module docstring), prints and returns the summary.

    ``tta`` averages every prediction with its left-right mirror (None: as the pipeline does by default)."""
    from KneeSegmentationLib.segment.pipeline import SegmentationSettings, run_segmentation

    t_start = time.perf_counter()
    model = model if isinstance(model, LoadedModel) else load_model(model)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    maps = {m.id: m for m in load_dataset(Path(dataset), ROLES)}
    plan = case_plan(list(maps.values()), cases)
    shown_at = set(np.round(np.linspace(0, len(plan) - 1, min(6, len(plan)))).astype(int).tolist())  # all planes
    rows, shown, plan_info = [], [], []
    for k, case in enumerate(plan):
        m = maps[case.map_id]
        t0 = time.perf_counter()
        image, truth_img = render_case(m, case.plane, case.contrast, case.seed)
        t_render = time.perf_counter() - t0
        t0 = time.perf_counter()
        result = run_segmentation(image, SegmentationSettings(model=model, device="cpu", n4=True, tta=tta))
        seconds = time.perf_counter() - t0
        pred, truth = sitk.GetArrayFromImage(result.labelmap), sitk.GetArrayFromImage(truth_img)
        case_rows = score_case(pred, truth, image.GetSpacing())
        for r in case_rows:
            rows.append({"model": model.card.tag, "case": case.id, "map": case.map_id, "role": case.role,
                         "plane": case.plane, "contrast": case.contrast, "seed": case.seed, **r,
                         "seconds": round(seconds, 2)})
        plan_info.append({"case": case.id, **asdict(case), "size": list(image.GetSize()),
                          "spacing_mm": [round(s, 3) for s in image.GetSpacing()],
                          "seconds_render": round(t_render, 2), "seconds_pipeline": round(seconds, 2)})
        if k in shown_at:
            z = _best_slice(truth)
            shown.append((case, sitk.GetArrayViewFromImage(image)[z].copy(), truth[z], pred[z]))
        log(f"[{k + 1}/{len(plan)}] {case.id} {case.contrast}: "
            + ", ".join(f"{r['bone']} {r['dice']:.3f}" for r in case_rows) + f" ({seconds:.1f} s)")
    summary = {"benchmark": BENCHMARK_VERSION, "model": model.card.tag, "model_path": str(model.path),
               "dataset": str(dataset), "cases": cases, "n_cases": len(plan),
               "maps": {i: {"role": m.role, "file_sha256": m.entry.get("file_sha256", "")}
                        for i, m in maps.items() if i in {c.map_id for c in plan}},
               "grid": "acquisition grid (its spacing), full pipeline with N4",
               "tta": SegmentationSettings(tta=tta).mirrored_for(model.card),
               "missing_prediction": "Dice 0, HD95/MSD nan in the CSV; counted in 'missed', not in the distance means",
               **summarize(rows), "plan": plan_info}
    write_text_atomically(out_dir / "benchmark.csv", _csv_text(rows))
    draw(shown, rows, out_dir / "benchmark.png", f"{model.card.tag}: {BENCHMARK_VERSION}, {len(plan)} cases")
    if echoes:
        from .evaluate import echo_consistency

        if data is None:
            from .mskt import fetch_mskt

            data = fetch_mskt()
        t0 = time.perf_counter()
        summary["echo_consistency"] = echo_consistency(model, Path(data) / "MESE_T2_dicom_data_anon", out_dir,
                                                        tta=tta)
        summary["echo_consistency"]["seconds"] = time.perf_counter() - t0
    summary["seconds"] = time.perf_counter() - t_start
    summary = _rounded(summary)
    summary["line"] = summary_line(summary)
    write_text_atomically(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    log(summary["line"])
    return summary


def load_summary(path: Path) -> dict:
    """A ``summary.json`` (or the folder holding it)."""
    path = Path(path)
    path = path / "summary.json" if path.is_dir() else path
    return json.loads(path.read_text(encoding="utf-8"))
