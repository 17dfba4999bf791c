"""``benchmark``: the one fixed benchmark on which model versions are compared.

Held-out anatomy only: every map of role ``val`` or ``test`` in the dataset (the real T2-label map and the
held-out shape-model knees). Each map is rendered like a clinical 2D knee protocol in the sagittal, coronal
and axial plane (thick slices along the plane's normal, 0.4–0.6 mm in plane over a 150–160 mm field of view
around the knee joint, a few degrees oblique), in one of three named contrasts with fixed tissue intensities,
with a smooth bias field and Rician noise, every random choice fixed by a seed derived from (map id, plane).
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
import torch
import torch.nn.functional as F

from KneeSegmentationLib.constants import BONES
from KneeSegmentationLib.errors import DatasetError
from KneeSegmentationLib.files import write_atomically, write_text_atomically
from KneeSegmentationLib.metrics import dice, hd95, mean_surface_distance
from KneeSegmentationLib.modelfile import LoadedModel, load_model

from . import tissues as T
from .dataset import LabelMap, load_dataset

BENCHMARK_VERSION = "kneeseg-benchmark/1"
DEFAULT_DATASET = Path("runs/dataset3")
ROLES = ("val", "test")  # held-out maps only, in this order
CSV_COLUMNS = ("model", "case", "map", "role", "plane", "contrast", "seed", "bone", "dice", "hd95_mm", "msd_mm",
               "truth_ml", "pred_ml", "seconds")
MIN_TRUTH_ML = 0.5  # a bone with less truth than this inside the acquisition (a sliver at the edge) is not scored

# --- Acquisition protocols ------------------------------------------------------------------------------
# Image axes (ITK direction columns, LPS) of each plane before the small oblique tilt: (column axis, row axis);
# the slice axis is their cross product, along the plane's normal. As real series: a sagittal image has its
# columns along P and its rows along I (PIR, like the MESE sample), a coronal one L/I, an axial one L/P.
PLANE_AXES = {
    "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),  # normal -x (R): slices across the knee's width
    "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),  # normal +y (P)
    "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),  # normal +z (S)
}
PLANES = tuple(PLANE_AXES)
COVERAGE_MM = {"sagittal": 110.0, "coronal": 110.0, "axial": 130.0}  # slab extent planned along the normal
SLICES = (24, 40)  # slice count clipped to this range
INPLANE_MM = (0.4, 0.6)  # in-plane pixel spacing, uniform
FOV_MM = (150.0, 160.0)  # square in-plane field of view, uniform
THICKNESS_MM = (3.0, 4.0)  # slice thickness (rectangular slice profile), uniform
GAP_MM = (0.0, 1.0)  # slice spacing = thickness + gap (the MESE sample: 3 mm slices every 4 mm)
TILT_DEG = 8.0  # oblique planning: rotation up to this about each in-plane axis
CENTER_JITTER_MM = 5.0  # the field of view is centred within this of the knee joint centre, per axis
BIAS_STD = 0.25  # std of the log bias field at its control points...
BIAS_CONTROL_POINTS = (3, 4, 4)  # ...on a coarse (slice, row, column) grid, upsampled trilinearly
TEXTURE_STD = 0.03  # within-tissue intensity variation on the map grid (fraction of full scale)
SIGNAL_SCALE = 1000.0  # image values: intensities below x this

# --- Contrasts: fixed mean intensity of each generation label (0..1) and the noise level ----------------------
_BASE = {T.OUTSIDE: 0.0, T.AIR: 0.01, **{c: 0.03 for c in T.CORTICES}}


def _contrast(fat, marrow, muscle, fluid, cartilage, meniscus) -> np.ndarray:
    means = np.zeros(T.NUM_GEN_LABELS, np.float32)
    for label, value in _BASE.items():
        means[label] = value
    means[T.FAT], means[T.MUSCLE], means[T.FLUID], means[T.MENISCUS] = fat, muscle, fluid, meniscus
    means[list(T.MARROWS)] = marrow
    means[[T.FEMORAL_CARTILAGE, T.TIBIAL_CARTILAGE, T.PATELLAR_CARTILAGE]] = cartilage
    return means


CONTRASTS = {  # name -> (tissue means, Rician noise sigma as a fraction of full scale)
    "T1": (_contrast(fat=1.0, marrow=0.9, muscle=0.35, fluid=0.18, cartilage=0.45, meniscus=0.06), 0.03),
    "PD-FS": (_contrast(fat=0.10, marrow=0.14, muscle=0.30, fluid=0.95, cartilage=0.60, meniscus=0.05), 0.04),
    "T2": (_contrast(fat=0.62, marrow=0.52, muscle=0.20, fluid=1.0, cartilage=0.30, meniscus=0.05), 0.04),
}


def _hash(text: str) -> int:
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
    contrast = names[(_hash(m.id) + PLANES.index(plane)) % len(names)]
    return Case(m.id, m.role, plane, contrast, _hash(f"{BENCHMARK_VERSION}:{m.id}:{plane}"))


def held_out_maps(maps: list[LabelMap]) -> list[LabelMap]:
    """Maps of role val/test, real and shape-model alike, in a fixed order (role, then id)."""
    chosen = [m for m in maps if m.role in ROLES]
    return sorted(chosen, key=lambda m: (ROLES.index(m.role), m.id))


def case_plan(maps: list[LabelMap], cases: str = "all") -> list[Case]:
    """``all``: every (held-out map, plane); ``quick``: one case per plane, on the first maps (3 cases)."""
    maps = held_out_maps(maps)
    if not maps:
        raise DatasetError("the benchmark needs maps of role 'val' or 'test'")
    if cases == "all":
        return [case_for(m, p) for m in maps for p in PLANES]
    if cases == "quick":
        return [case_for(maps[j % len(maps)], p) for j, p in enumerate(PLANES)]
    raise ValueError(f"cases must be 'all' or 'quick', not {cases!r}")


# --- Rendering -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Acquisition:
    """The acquired grid of one case: ITK direction (columns = image axes), spacing and size (x, y, slice)."""

    plane: str
    direction: tuple[float, ...]  # 9 values, row-major
    spacing: tuple[float, float, float]
    size: tuple[int, int, int]
    center_lps: tuple[float, float, float]
    thickness_mm: float

    def reference(self, shift_mm: float = 0.0) -> sitk.Image:
        """An empty image on this grid, optionally shifted by ``shift_mm`` along the slice normal."""
        d = np.reshape(self.direction, (3, 3))
        half = d @ (np.asarray(self.spacing) * (np.asarray(self.size) - 1) / 2)
        origin = np.asarray(self.center_lps) - half + shift_mm * d[:, 2]
        ref = sitk.Image([int(s) for s in self.size], sitk.sitkUInt8)
        ref.SetSpacing([float(s) for s in self.spacing])
        ref.SetOrigin([float(o) for o in origin])
        ref.SetDirection([float(v) for v in self.direction])
        return ref


def _rotation(axis: np.ndarray, angle_deg: float) -> np.ndarray:
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    t = math.radians(angle_deg)
    return np.eye(3) + math.sin(t) * k + (1 - math.cos(t)) * k @ k


def plan_acquisition(labelmap: LabelMap, plane: str, rng: np.random.Generator) -> Acquisition:
    if plane not in PLANE_AXES:
        raise ValueError(f"plane must be one of {PLANES}, not {plane!r}")
    col, row = (np.array(v) for v in PLANE_AXES[plane])
    d = np.stack([col, row, np.cross(col, row)], axis=1)
    d = _rotation(d[:, 1], rng.uniform(-TILT_DEG, TILT_DEG)) @ _rotation(d[:, 0], rng.uniform(-TILT_DEG, TILT_DEG)) @ d
    inplane = rng.uniform(*INPLANE_MM)
    matrix = int(round(rng.uniform(*FOV_MM) / inplane))
    thickness = rng.uniform(*THICKNESS_MM)
    step = thickness + rng.uniform(*GAP_MM)
    slices = int(np.clip(round(COVERAGE_MM[plane] / step), *SLICES))
    center = labelmap.joint_center + rng.uniform(-CENTER_JITTER_MM, CENTER_JITTER_MM, 3)
    return Acquisition(plane, tuple(float(v) for v in d.ravel()), (inplane, inplane, step), (matrix, matrix, slices),
                       tuple(float(c) for c in center), thickness)


def _map_image(labelmap: LabelMap, array: np.ndarray) -> sitk.Image:
    img = sitk.GetImageFromArray(array)
    img.SetOrigin([float(o) for o in labelmap.origin])
    img.SetSpacing((float(labelmap.spacing),) * 3)
    return img


def _bias(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    coarse = torch.from_numpy(rng.standard_normal(BIAS_CONTROL_POINTS).astype(np.float32) * BIAS_STD)
    field = F.interpolate(coarse[None, None], size=shape, mode="trilinear", align_corners=True)[0, 0]
    return torch.exp(field).numpy()


def render_acquisition(labelmap: LabelMap, acq: Acquisition, contrast: str,
                       rng: np.random.Generator) -> tuple[sitk.Image, sitk.Image]:
    """(image float32, truth uint8) of ``labelmap`` acquired on ``acq`` in ``contrast``, noise from ``rng``."""
    means, noise_sigma = CONTRASTS[contrast]
    labels = labelmap.labels
    # Tissue intensities with a little texture on the map's grid (nothing outside the map), slightly smoothed
    # so the map's voxel staircase does not show at the finer in-plane resolution.
    painted = means[labels]
    texture = rng.standard_normal(labels.shape, dtype=np.float32)
    texture *= TEXTURE_STD
    texture[labels <= T.AIR] = 0.0
    painted += texture
    del texture
    fine = sitk.SmoothingRecursiveGaussian(_map_image(labelmap, painted), 0.5 * labelmap.spacing)
    del painted
    # Rectangular slice profile: the mean of sub-slices across the thickness, each resampled linearly.
    n_sub = max(3, int(math.ceil(acq.thickness_mm / (0.5 * labelmap.spacing))))
    clean = None
    for k in range(n_sub):
        shift = acq.thickness_mm * ((k + 0.5) / n_sub - 0.5)
        sub = sitk.GetArrayFromImage(sitk.Resample(fine, acq.reference(shift), sitk.Transform(), sitk.sitkLinear,
                                                   0.0, sitk.sitkFloat32))
        clean = sub if clean is None else clean + sub
    clean /= n_sub
    clean *= _bias(clean.shape, rng)
    sigma = noise_sigma
    real = clean + rng.standard_normal(clean.shape, dtype=np.float32) * sigma
    imag = rng.standard_normal(clean.shape, dtype=np.float32) * sigma
    pixels = (np.sqrt(real * real + imag * imag) * SIGNAL_SCALE).astype(np.float32)
    ref = acq.reference()
    image = sitk.GetImageFromArray(pixels)
    image.CopyInformation(ref)
    gen = sitk.Resample(_map_image(labelmap, labels), ref, sitk.Transform(), sitk.sitkNearestNeighbor,
                        T.OUTSIDE, sitk.sitkUInt8)
    truth = sitk.GetImageFromArray(T.TARGET_OF[sitk.GetArrayViewFromImage(gen)].astype(np.uint8))
    truth.CopyInformation(ref)
    return image, truth


def render_case(labelmap: LabelMap, plane: str, contrast: str, seed: int) -> tuple[sitk.Image, sitk.Image]:
    """One benchmark image and its truth (model classes at the acquisition voxel centres, 0 outside the map).
    Everything random (grid, tilt, centre, texture, bias, noise) comes from ``seed``."""
    if contrast not in CONTRASTS:
        raise ValueError(f"contrast must be one of {tuple(CONTRASTS)}, not {contrast!r}")
    rng = np.random.default_rng(seed)
    acq = plan_acquisition(labelmap, plane, rng)
    return render_acquisition(labelmap, acq, contrast, rng)


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
    different benchmark versions or case plans, which are not comparable."""
    for key in ("benchmark", "cases"):
        if summary_a.get(key) != summary_b.get(key):
            raise ValueError(f"benchmark summaries differ in {key!r}; they are not comparable")
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
    line = (f"{summary['model']} benchmark ({summary['n_cases']} cases): "
            f"{' / '.join(n + ' ' + format(bones[n]['dice_mean'], '.3f') for n in names)} Dice "
            f"(min {fmt('dice_min', '.3f')}), HD95 {fmt('hd95_mm_mean', '.1f')} mm, MSD {fmt('msd_mm_mean', '.2f')} mm")
    missed = [f"{n} {bones[n]['missed']}/{bones[n]['n']}" for n in names if bones[n]["missed"]]
    if missed:
        line += f"; missed {', '.join(missed)}"
    echo = summary.get("echo_consistency")
    if echo:
        vals = [(b.name, echo[b.name]["pairwise_dice_min"]) for b in BONES if b.name in echo]
        line += "; echo consistency " + " / ".join(
            f"{n} {v:.3f}" if v is not None else f"{n} nan" for n, v in vals) + " (min pairwise Dice)"
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
                  cases: str = "all", echoes: bool = True, data: Path | None = None, log=print) -> dict:
    """Runs the benchmark, writes ``out_dir`` (see module docstring), prints and returns the summary."""
    from KneeSegmentationLib.pipeline import SegmentationSettings, run_segmentation

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
        result = run_segmentation(image, SegmentationSettings(model=model, device="cpu", n4=True))
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
        summary["echo_consistency"] = echo_consistency(model, Path(data) / "MESE_T2_dicom_data_anon", out_dir)
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
