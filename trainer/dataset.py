"""``prepare``: turn the real knee label maps into a synthesis dataset; ``load_dataset``: read it back, checked.

Each source label map is resampled once (nearest neighbour) onto an identity-direction grid of
``PREPARE_SPACING_MM`` (fine enough for the 1.5 mm model grid rendered with 2x supersampling, small enough
to sample from fast), and its labels are turned into generation labels (``tissues.py``): bones with their
cortical rim, cartilage, menisci, patella, the tendons at its poles (``tendons.py``), and the unlabelled
background split into fluid, muscle, fat and air by distance bands and a smooth random field (an
intensity-free clustering). The dataset folder holds one
compressed NRRD per map and ``manifest.json`` (ids, roles, source files and their SHA-256, spacing, voxel
counts, knee joint centre). Which maps are held out for validation is recorded there, not implied.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from KneeSegmentationLib.constants import BONES, FEMUR, TIBIA
from KneeSegmentationLib.errors import DatasetError
from KneeSegmentationLib.files import read_json_object, sha256_of
from KneeSegmentationLib.names import relative_entry
from KneeSegmentationLib.segment.preprocess import joint_center, model_grid_around, physical_bounds

from . import ranges as R
from . import tissues as T
from .tendons import add_tendons

FORMAT = "kneeseg-synth-dataset/1"
MANIFEST = "manifest.json"
PREPARE_SPACING_MM = 0.75
BONE_POINTS = 96  # voxel positions stored per bone and map, to centre crops anywhere along a bone cheaply
UNSET = 255  # marks "outside the source map" while resampling


@dataclass(frozen=True)
class SourceMap:
    """A real label map to learn from: where it is, how it is used, and what its values mean."""

    id: str
    path: Path
    role: str  # "train" or "val"
    labels: dict[int, str] = field(default_factory=lambda: dict(T.MSKT_LABELS))
    note: str = ""
    meta: dict = field(default_factory=dict)  # provenance for the manifest: source, licence, seed, side
    spacing_mm: float | None = None  # prepare on this grid instead of the dataset's (large shape-model maps)


def mskt_sources(data_dir: Path) -> list[SourceMap]:
    """The three mskt label maps. T2-label (a left knee, another subject) is held out for validation."""
    data_dir = Path(data_dir)
    return [
        SourceMap("right_knee", data_dir / "right_knee_example.nrrd", "train",
                  note="right knee, 0.36x0.36x0.7 mm, no fibula label"),
        SourceMap("dess_fibula", data_dir / "SAG_3D_DESS_RIGHT_bones_cart_men_fib-label.nrrd", "train",
                  note="right knee, the only map with a fibula (and menisci); its fibula can only be "
                       "validated under unseen contrasts and deformations, not on unseen anatomy"),
        SourceMap("t2_left", data_dir / "Par_Rec_T2_Test" / "T2-label.nrrd", "val",
                  note="left knee, 0.35 mm iso, no fibula label: held out, validates Femur and Tibia"),
    ]


# ------------------------------------------------------------------------------------------------ prepare
def read_source(src: SourceMap) -> sitk.Image:
    """Reads and checks one source label map (3D, integer, with femur and tibia)."""
    if not src.path.is_file():
        raise DatasetError(f"label map {src.path} not found (run `python -m trainer prepare` with the right --data)")
    try:
        image = sitk.ReadImage(str(src.path))
    except RuntimeError as e:
        raise DatasetError(f"{src.path}: unreadable label map ({str(e).strip().splitlines()[-1]})") from e
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise DatasetError(f"{src.path}: a label map must be a 3D scalar image")
    if image.GetPixelID() not in (sitk.sitkUInt8, sitk.sitkInt8, sitk.sitkUInt16, sitk.sitkInt16,
                                  sitk.sitkUInt32, sitk.sitkInt32):
        raise DatasetError(f"{src.path}: a label map must have an integer pixel type, "
                           f"not {image.GetPixelIDTypeAsString()}")
    values = set(np.unique(sitk.GetArrayViewFromImage(image)).tolist()) - {0}
    if not values:
        raise DatasetError(f"{src.path}: the label map is empty")
    unknown = values - set(src.labels)
    if unknown:
        raise DatasetError(f"{src.path}: unexpected label values {sorted(unknown)} (known: {sorted(src.labels)})")
    names = {src.labels[v] for v in values}
    if not {"femur", "tibia"} <= names:
        raise DatasetError(f"{src.path}: a label map needs at least femur and tibia (has {sorted(names)})")
    return image


def _identity_grid(image: sitk.Image, spacing: float) -> sitk.Image:
    lo, hi = physical_bounds(image)
    size = np.ceil((hi - lo) / spacing).astype(int) + 1
    return model_grid_around((lo + hi) / 2, (spacing,) * 3, size)


def _smooth_field(shape: tuple[int, ...], sigma_vox: float, seed: int) -> np.ndarray:
    """A smooth Gaussian random field of unit standard deviation (the background clustering field)."""
    rng = np.random.default_rng(seed)
    noise = sitk.GetImageFromArray(rng.standard_normal(shape).astype(np.float32))
    smooth = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(noise, float(sigma_vox)))
    return (smooth - smooth.mean()) / max(float(smooth.std()), 1e-6)


def _distance(mask: np.ndarray, spacing: float, inside_positive: bool) -> np.ndarray:
    img = sitk.GetImageFromArray(mask.astype(np.uint8))
    img.SetSpacing((spacing,) * 3)
    d = sitk.SignedMaurerDistanceMap(img, insideIsPositive=inside_positive, squaredDistance=False,
                                     useImageSpacing=True)
    return sitk.GetArrayFromImage(d)


def generation_labels(names: np.ndarray, outside: np.ndarray, spacing: float, seed: int) -> np.ndarray:
    """Generation labels (``tissues``) from a map of tissue-name indices. ``names`` holds indices into
    ``NAME_ORDER`` (0 = unlabelled); ``outside`` marks voxels outside the source map."""
    gen = np.full(names.shape, T.FLUID, np.uint8)
    for bone, (marrow, cortex) in T.BONE_GEN.items():
        mask = names == NAME_ORDER.index(bone)
        if not mask.any():
            continue
        # A bone cut by the edge of the source map is not a bone surface there: count outside as bone.
        depth = _distance(mask | outside, spacing, inside_positive=True)
        gen[mask] = marrow
        gen[mask & (depth <= R.CORTEX_MM)] = cortex
    for name, label in T.SOFT_GEN.items():
        gen[names == NAME_ORDER.index(name)] = label
    unlabelled = names == 0
    dist = _distance(~unlabelled & ~outside, spacing, inside_positive=False)
    sigma = R.NOISE_FIELD_SIGMA_MM / spacing
    outline = _smooth_field(names.shape, 2 * sigma, seed)
    cluster = _smooth_field(names.shape, sigma, seed + 1)
    muscle_cut = np.quantile(cluster, 1 - R.MUSCLE_FRACTION)
    leg = R.LEG_RADIUS_MM + R.LEG_RADIUS_JITTER_MM * outline
    soft = unlabelled & (dist > R.FLUID_BAND_MM * (1 + 0.5 * cluster))
    gen[soft] = np.where(cluster[soft] > muscle_cut, T.MUSCLE, T.FAT).astype(np.uint8)
    gen[unlabelled & (dist > leg - R.SUBCUTANEOUS_FAT_MM)] = T.FAT
    gen[unlabelled & (dist > leg)] = T.AIR
    gen[outside] = T.OUTSIDE
    femur, tibia, patella = (names == NAME_ORDER.index(bone) for bone in ("femur", "tibia", "patella"))
    return add_tendons(gen, femur, tibia, patella, spacing, np.random.default_rng(seed + 2))


NAME_ORDER = ["", "femur", "tibia", "fibula", "patella", "femoral cartilage", "tibial cartilage",
              "patellar cartilage", "meniscus"]


def _names_image(image: sitk.Image, src: SourceMap) -> sitk.Image:
    """Source values -> indices into ``NAME_ORDER`` (uint8), same geometry."""
    arr = sitk.GetArrayFromImage(image).astype(np.int64)
    lut = np.zeros(max(max(src.labels), int(arr.max())) + 1, np.uint8)
    for value, name in src.labels.items():
        lut[value] = NAME_ORDER.index(name)
    out = sitk.GetImageFromArray(lut[np.clip(arr, 0, None)])
    out.CopyInformation(image)
    return out


def prepare_map(src: SourceMap, spacing: float = PREPARE_SPACING_MM) -> tuple[sitk.Image, dict]:
    """One source map -> (generation label image on an identity grid, manifest entry)."""
    image = read_source(src)
    names = _names_image(image, src)
    spacing = float(src.spacing_mm or spacing)
    grid = _identity_grid(image, spacing)
    resampled = sitk.Resample(names, grid, sitk.Transform(), sitk.sitkNearestNeighbor, UNSET, sitk.sitkUInt8)
    arr = sitk.GetArrayFromImage(resampled)
    outside = arr == UNSET
    arr[outside] = 0
    seed = int.from_bytes(hashlib.sha256(src.id.encode()).digest()[:4], "little")
    gen = generation_labels(arr, outside, spacing, seed)
    out = sitk.GetImageFromArray(gen)
    out.CopyInformation(grid)
    target = T.TARGET_OF[gen]
    center, _ = joint_center(target, out)
    if center is None:
        raise DatasetError(f"{src.path}: no femur or tibia left after resampling")
    rng = np.random.default_rng(seed)
    points = {b.name.lower(): _bone_points(target == b.label, out, rng) for b in BONES}
    counts = np.bincount(target.ravel(), minlength=len(BONES) + 1)
    entry = {
        "id": src.id, "role": src.role, "file": f"{src.id}.nrrd", "note": src.note,
        "source": src.path.name, "source_sha256": sha256_of(src.path),
        "source_size": list(image.GetSize()), "source_spacing_mm": [round(s, 4) for s in image.GetSpacing()],
        "size": list(out.GetSize()), "origin_lps": list(out.GetOrigin()), "spacing_mm": spacing,
        "voxels": {b.name.lower(): int(counts[b.label]) for b in BONES},
        "has_fibula": bool(counts[3] > 0), "joint_center_lps": [float(c) for c in center],
        "bone_points_lps": points, "meta": dict(src.meta),
    }
    return out, entry


def _bone_points(mask: np.ndarray, grid: sitk.Image, rng: np.random.Generator) -> list[list[float]]:
    """Up to ``BONE_POINTS`` positions (LPS) spread along the bone: drawn evenly over its slices along the
    bone's long axis, not over its voxels, so the thin shafts get as many crop centres as the wide condyles."""
    idx = np.argwhere(mask)
    if len(idx) == 0:
        return []
    axis = int(np.argmax(idx.max(axis=0) - idx.min(axis=0)))  # the bone's long axis on the grid
    order = np.argsort(idx[:, axis], kind="stable")
    levels = np.linspace(0, len(order) - 1, min(BONE_POINTS, len(order))).astype(int)
    chosen = []
    for rank in levels:  # a random voxel of the slice at this position along the axis
        level = idx[order[rank], axis]
        same = np.flatnonzero(idx[:, axis] == level)
        chosen.append(idx[same[rng.integers(len(same))]])
    return [list(grid.TransformIndexToPhysicalPoint([int(i) for i in p[::-1]])) for p in chosen]


def prepare(sources: list[SourceMap], out_dir: Path, spacing: float = PREPARE_SPACING_MM,
            log=print) -> Path:
    """Writes the dataset folder ``out_dir`` (atomically: built beside it, then renamed; never overwritten)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise DatasetError(f"{out_dir} exists and is not empty; choose a new folder (datasets are not overwritten)")
    if not any(s.role == "train" for s in sources):
        raise DatasetError("no training map among the sources")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        entries = []
        for src in sources:
            log(f"preparing {src.id} ({src.role}) from {src.path.name}")
            image, entry = prepare_map(src, spacing)
            entry["file_sha256"] = ""
            sitk.WriteImage(image, str(tmp / entry["file"]), useCompression=True)
            entry["file_sha256"] = sha256_of(tmp / entry["file"])
            entries.append(entry)
        manifest = {
            "format": FORMAT, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "spacing_mm": spacing, "generation_labels": {str(k): v for k, v in T.GEN_NAMES.items()},
            "validation": "maps with role 'val' are never used for training",
            "maps": entries,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        if out_dir.exists():
            out_dir.rmdir()
        os.rename(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


# ------------------------------------------------------------------------------------------------- load
@dataclass
class LabelMap:
    """One prepared map, ready for the generator: generation labels (z, y, x) on an identity grid."""

    id: str
    role: str
    labels: np.ndarray
    origin: np.ndarray  # LPS of voxel (0, 0, 0)
    spacing: float
    joint_center: np.ndarray
    bone_points: dict[str, np.ndarray]  # bone name (lower case) -> (n, 3) LPS positions along that bone
    entry: dict

    @property
    def fibula_points(self) -> np.ndarray:
        return self.bone_points.get("fibula", np.zeros((0, 3)))

    @property
    def has_fibula(self) -> bool:
        return len(self.fibula_points) > 0


def read_manifest(folder: Path) -> dict:
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise DatasetError(f"dataset folder {folder} not found; create it with `python -m trainer prepare`")
    if not path.is_file():
        raise DatasetError(f"{folder} has no {MANIFEST}; not a dataset made by `python -m trainer prepare`")
    manifest = read_json_object(path, DatasetError, "the dataset manifest")
    if manifest.get("format") != FORMAT or not isinstance(manifest.get("maps"), list):
        raise DatasetError(f"{path}: not a {FORMAT} manifest")
    return manifest


def _read_points(entry: dict) -> dict[str, np.ndarray]:
    points = dict(entry.get("bone_points_lps") or {})
    if "fibula_points_lps" in entry:  # datasets made before crops along every bone
        points.setdefault("fibula", entry["fibula_points_lps"])
    return {name: np.array(p, float).reshape(-1, 3) for name, p in points.items() if len(p)}


def load_dataset(folder: Path, roles: tuple[str, ...] = ("train", "val")) -> list[LabelMap]:
    """Loads and checks the maps of ``roles`` (file present, checksum, geometry, bones present)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    maps = []
    for entry in manifest["maps"]:
        try:
            role, file = entry["role"], entry["file"]
        except (KeyError, TypeError) as e:
            raise DatasetError(f"{folder / MANIFEST}: malformed map entry {entry!r}") from e
        if role not in roles:
            continue
        path = relative_entry(folder, file, "manifest entry", DatasetError)  # never outside the dataset
        if not path.is_file():
            raise DatasetError(f"{path} listed in the manifest is missing")
        if entry.get("file_sha256") and sha256_of(path) != entry["file_sha256"]:
            raise DatasetError(f"{path}: checksum differs from the manifest (modified or damaged)")
        image = sitk.ReadImage(str(path))
        arr = sitk.GetArrayFromImage(image)
        if list(image.GetSize()) != list(entry["size"]) or arr.dtype != np.uint8:
            raise DatasetError(f"{path}: size or pixel type differs from the manifest")
        if arr.max() >= T.NUM_GEN_LABELS:
            raise DatasetError(f"{path}: generation labels out of range (max {arr.max()})")
        target = T.TARGET_OF[arr]
        if not ((target == FEMUR.label).any() and (target == TIBIA.label).any()):
            raise DatasetError(f"{path}: no femur or tibia voxels; the map is empty")
        maps.append(LabelMap(
            id=entry["id"], role=role, labels=arr, origin=np.array(image.GetOrigin()),
            spacing=float(image.GetSpacing()[0]), joint_center=np.array(entry["joint_center_lps"], float),
            bone_points=_read_points(entry), entry=entry))
    if not maps:
        raise DatasetError(f"{folder}: no maps with role {' or '.join(roles)}")
    return maps
