"""Knee anatomies drawn from the LLP26 lower-limb shape model, written as mskt-valued label maps.

Source: the sdist of ``musculoskeletal-models==0.2.4`` (Auckland Bioengineering Institute, licence MPL-2.0,
https://github.com/musculoskeletal/models). ``fetch_llp26`` downloads it once with pip (source only), checks a
pinned SHA-256 and extracts only the files used here (the left shape model, the left femur, patella and
tibia+fibula atlas meshes, the femur's mean-shape node file for a check, and the licence) into the cache
(``$KNEESEG_CACHE`` or ``~/.cache/kneesegmentation``), like ``trainer.mskt``.

What the files hold (checked, see Testing/Python/test_shapemodel.py):

* ``LLP26_rigid.pc`` is a pickle of a dict {mean (9675,), modes (9675, 26), weights (26,) = the modes'
  variances (the last is ~1e-22: 25 usable modes), projectedWeights, sizes=None, SD=None}. It is read by
  ``load_pc`` through an unpickler that admits nothing but numpy's array reconstruction.
* Its 3225 points are dim-major (all x, then all y, then all z) and are the nodes of the pelvis (1946),
  femur (634), patella (74) and tibia+fibula (571) meshes in that order: the mean reproduces the atlas
  ``*_mean_rigid_LLP26.geof`` node coordinates to 1e-13 mm.
* Frame: the model's coordinates are millimetres in a frame that already is LPS: +z superior (femur
  z 793..1227, tibia 443..817 for the mean), +y posterior (the patella at y 2..25 lies in front of the femoral
  condyles, the fibula behind the tibia's centre), +x left (the left femur lies at +x of the pelvis' midline,
  the fibula - lateral - at +x of the tibia). So the left limb is used as it is; a right limb is the left one
  mirrored in x (x -> -x), which is what the sdist's ``LLP26_right_mirrored_from_left_rigid.pc`` is too (it
  was re-aligned after mirroring, so it is not simply x-negated; we mirror the left model ourselves and keep
  one topology). The long axis is taken as z (the model is in standing, scanner-like pose).

Speed (measured on this machine, one core, 1 mm grid): 0.06 s to evaluate and voxelize a draw's surfaces and
measure its overlaps, 0.2 s for an accepted draw's label map with cartilage (its NRRD: ~0.01 s); with the
refusals, 0.4 s per accepted map (8 maps from 39 draws in 3.4 s). Well under the 3 s target.

The pieces: ``meshes.py`` turns the atlas meshes into closed surfaces (``bone_surfaces`` evaluates them for a
draw), ``voxelize.py`` voxelizes them on the knee crop, refuses interpenetrating draws and adds cartilage;
``rasterize`` and ``write_shape_maps`` here run the whole chain.
"""
from __future__ import annotations

import importlib
import io
import pickle
import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from KneeSegmentationLib import paths
from KneeSegmentationLib.errors import DatasetError
from . import tissues as T
from .dataset import SourceMap
from .meshes import Surface, build_surface, components, read_mesh
from .sdist import Sdist, ensure_sdist, extract
from .voxelize import OVERLAP_LIMIT_ML, DrawRefused, check_overlap, knee_crop, label_map, voxelize

PACKAGE = "musculoskeletal-models"
VERSION = "0.2.4"
SDIST = Sdist(PACKAGE, VERSION, "4aec4179318a084b1de3a4fe5553803bf13134fbb011ca244a24300f4fedfb1c")
SDIST_NAME = SDIST.file_name
ARCHIVE_ROOT = SDIST.archive_root
MAP_ID_PREFIX = "llp26_"  # the map id of every shape-model knee starts so (llp26_<side>_<seed>)
EXTRACTED_DIR = f"llp26-{PACKAGE}-{VERSION}"
LICENCE = "MPL-2.0"
SOURCE = f"LLP26 shape model, {PACKAGE} {VERSION} sdist"
SOURCE_URL = "https://github.com/musculoskeletal/models"
MODELS = "src/musculoskeletal/models"
PC_FILE = f"{MODELS}/shape_models/LLP26_rigid.pc"
MESH_FILES = {  # mesh name in the .pc's point vector -> atlas file stem; order = order of the points
    "femur": f"{MODELS}/atlas_meshes/femur_left_quartic_flat",
    "patella": f"{MODELS}/atlas_meshes/patella_11_left",
    "tibia_fibula": f"{MODELS}/atlas_meshes/tibia_fibula_left_cubic_flat",
}
FEMUR_MEAN_GEOF = f"{MODELS}/atlas_meshes/femur_left_mean_rigid_LLP26.geof"
WANTED = ("LICENSE", PC_FILE, FEMUR_MEAN_GEOF) + tuple(f"{s}.{e}" for s in MESH_FILES.values() for e in ("ens", "mesh"))
NODE_COUNTS = (("pelvis", 1946), ("femur", 634), ("patella", 74), ("tibia_fibula", 571))

TRAIN_FIRST_SEED = 0
VAL_FIRST_SEED = 100000
TEST_FIRST_SEED = 200000
SIDES = ("left", "right")


# ------------------------------------------------------------------------------------------------ fetch
def fetch_llp26(cache_dir: Path | None = None) -> Path:
    """The extracted ``models`` folder (holding ``shape_models/`` and ``atlas_meshes/``); fetched on first use."""
    cache = Path(cache_dir) if cache_dir is not None else paths.cache_dir()
    root = cache / EXTRACTED_DIR
    if _is_complete(root):
        return root / MODELS
    cache.mkdir(parents=True, exist_ok=True)
    sdist = ensure_sdist(SDIST, cache)
    _extract_needed(sdist, root)
    if not _is_complete(root):
        raise DatasetError(f"Extraction of {sdist} did not produce the expected files under {root}.")
    return root / MODELS


def _is_complete(root: Path) -> bool:
    return all((root / name).is_file() for name in WANTED)


def _extract_needed(archive: Path, destination: Path) -> None:
    """Extracts the files of ``WANTED`` (no links, nothing outside the archive root) into ``destination``."""
    extract(SDIST, archive, destination, lambda relative: relative.as_posix() in WANTED, _is_complete)


# ------------------------------------------------------------------------------------------------ .pc
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Admits only numpy's array reconstruction; any other global is refused before it is looked up."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise DatasetError(f"refusing to unpickle {module}.{name}: a shape model file holds only numpy arrays")
        if module != "numpy":
            for candidate in ("numpy._core.multiarray", "numpy.core.multiarray"):
                try:
                    return getattr(importlib.import_module(candidate), name)
                except (ImportError, AttributeError):
                    continue
            raise DatasetError(f"numpy has no {module}.{name}")
        return getattr(np, name)

    def persistent_load(self, pid):
        raise DatasetError("refusing a pickle with persistent ids")


@dataclass(frozen=True)
class ShapeModel:
    """A point-distribution model: ``mean`` (3N,) dim-major, ``modes`` (3N, M), ``variances`` (M,)."""

    mean: np.ndarray
    modes: np.ndarray
    variances: np.ndarray

    @property
    def n_modes(self) -> int:
        return int(np.sum(self.variances > 1e-9 * self.variances.max()))

    def points(self, weights_sd: np.ndarray | None = None) -> np.ndarray:
        """(N, 3) points for mode weights given in standard deviations (None: the mean)."""
        x = self.mean.copy()
        if weights_sd is not None:
            m = len(weights_sd)
            x += self.modes[:, :m] @ (np.asarray(weights_sd, float) * np.sqrt(self.variances[:m]))
        return x.reshape(3, -1).T

    def draw_weights(self, seed: int, sd: float = 1.0) -> np.ndarray:
        return np.random.default_rng(int(seed)).standard_normal(self.n_modes) * float(sd)

    def draw(self, seed: int, sd: float = 1.0, side: str = "left") -> dict[str, np.ndarray]:
        """Node coordinates (LPS, mm) per bone mesh ("femur", "patella", "tibia_fibula") of one random limb:
        every usable mode at N(0, sd²) from ``seed``; ``sd=0`` gives the mean. ``side="right"`` mirrors in x."""
        w = self.draw_weights(seed, sd) if sd else None
        return split_nodes(self.points(w), side)


def split_nodes(points: np.ndarray, side: str = "left") -> dict[str, np.ndarray]:
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, not {side!r}")
    if len(points) != sum(n for _, n in NODE_COUNTS):
        raise DatasetError(f"the shape model has {len(points)} points, expected {sum(n for _, n in NODE_COUNTS)}")
    out, start = {}, 0
    for name, count in NODE_COUNTS:
        if name != "pelvis":
            p = points[start:start + count].copy()
            if side == "right":
                p[:, 0] = -p[:, 0]
            out[name] = p
        start += count
    return out


def load_pc(path: Path) -> ShapeModel:
    """Reads a GIAS ``.pc`` principal-component file safely (numpy arrays only)."""
    try:
        with open(path, "rb") as f:
            data = _ArrayUnpickler(io.BytesIO(f.read())).load()
    except DatasetError:
        raise
    except Exception as e:  # a truncated or malformed pickle
        raise DatasetError(f"{path}: not a readable shape model ({type(e).__name__}: {e})") from e
    if not isinstance(data, dict) or not {"mean", "modes", "weights"} <= set(data):
        raise DatasetError(f"{path}: a shape model needs mean, modes and weights")
    mean, modes, weights = (np.asarray(data[k], float) for k in ("mean", "modes", "weights"))
    if mean.ndim != 1 or modes.shape[0] != mean.shape[0] or modes.shape[1] != weights.shape[0] or mean.size % 3:
        raise DatasetError(f"{path}: inconsistent shapes mean {mean.shape}, modes {modes.shape}, "
                           f"weights {weights.shape}")
    return ShapeModel(mean, modes, weights)


@lru_cache(maxsize=4)
def _load_model_cached(path: str) -> ShapeModel:
    return load_pc(Path(path))


def load_model(models_dir: Path | None = None) -> ShapeModel:
    """The LLP26 (left) shape model of the fetched sdist."""
    models_dir = Path(models_dir) if models_dir is not None else fetch_llp26()
    return _load_model_cached(str(models_dir / "shape_models" / "LLP26_rigid.pc"))


# ------------------------------------------------------------------------------------------------ surfaces
@lru_cache(maxsize=4)
def _surfaces(models_dir: str) -> dict[str, tuple[str, Surface]]:
    """bone -> (mesh name, surface). The tibia+fibula mesh splits into two components: the larger is the tibia."""
    model = load_model(Path(models_dir))
    mean = model.draw(0, sd=0)
    out = {}
    for mesh, stem in MESH_FILES.items():
        elements = read_mesh(Path(models_dir).parent.parent.parent / stem)
        if mesh == "tibia_fibula":
            comps = components(elements)
            if len(comps) != 2:
                raise DatasetError(f"{stem}: expected tibia and fibula components, found {len(comps)}")
            for bone, comp in zip(("tibia", "fibula"), comps):
                out[bone] = (mesh, build_surface(bone, [elements[i] for i in comp], mean[mesh]))
        else:
            out[mesh] = (mesh, build_surface(mesh, elements, mean[mesh]))
    return out


def bone_surfaces(nodes: dict[str, np.ndarray], models_dir: Path | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """bone -> (points (K, 3), triangles (T, 3)) for node coordinates from ``ShapeModel.draw``. (A mirrored,
    right limb has its triangles' orientation reversed; voxelization does not depend on it.)"""
    models_dir = Path(models_dir) if models_dir is not None else fetch_llp26()
    out = {}
    for bone, (mesh, surface) in _surfaces(str(models_dir)).items():
        out[bone] = (surface.evaluate(nodes[mesh]), surface.triangles)
    return out


def rasterize(nodes: dict[str, np.ndarray], spacing: float = 1.0, models_dir: Path | None = None,
              limit_ml: float = OVERLAP_LIMIT_ML) -> tuple[sitk.Image, dict]:
    """Node coordinates of one limb (``ShapeModel.draw``) -> (label map, info {overlaps_ml, volumes_ml,
    joint_z}). Raises DrawRefused when two bones overlap by more than ``limit_ml``."""
    surfaces = bone_surfaces(nodes, models_dir)
    crop = knee_crop(surfaces, spacing)
    masks = voxelize(surfaces, crop)
    overlaps = check_overlap(masks, spacing, limit_ml)
    image = label_map(masks, crop)
    counts = np.bincount(sitk.GetArrayViewFromImage(image).ravel(), minlength=9)
    voxel_ml = spacing ** 3 / 1000.0
    names = {5: "femur", 6: "tibia", 7: "patella", 8: "fibula", 1: "femoral cartilage", 2: "tibial cartilage",
             4: "patellar cartilage"}
    info = {"overlaps_ml": overlaps, "joint_z": crop.joint_z,
            "volumes_ml": {n: round(float(counts[v] * voxel_ml), 2) for v, n in names.items()}}
    return image, info


# ------------------------------------------------------------------------------------------------ maps
def write_shape_maps(out_dir: Path, count: int, first_seed: int, role: str = "train",
                     side_cycle: tuple[str, ...] = ("left", "right"), log=print, sd: float = 1.0,
                     spacing: float = 1.0, models_dir: Path | None = None,
                     max_draws: int | None = None) -> list[SourceMap]:
    """Draws seeds first_seed, first_seed+1, ... (refusing interpenetrating ones) until ``count`` maps are
    written as ``llp26-<side>-<seed>.nrrd``; the side of the i-th accepted map is ``side_cycle[i % len]``."""
    bound = {"train": VAL_FIRST_SEED, "val": TEST_FIRST_SEED}.get(role)  # training never draws val/test seeds

    def check_seed(seed: int) -> None:
        if bound is not None and seed >= bound:
            raise DatasetError(f"{role} seeds must stay below {bound} (the next role's seed range); got {seed}")

    check_seed(first_seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    models_dir = Path(models_dir) if models_dir is not None else fetch_llp26()
    model = load_model(models_dir)
    has_meta = "meta" in getattr(SourceMap, "__dataclass_fields__", {})
    limit = max_draws if max_draws is not None else 30 * count + 30  # ~16 % of N(0, 1) draws are accepted
    sources, refused, seed, start = [], [], first_seed, time.perf_counter()
    while len(sources) < count:
        if seed - first_seed >= limit:
            raise DatasetError(f"only {len(sources)} of {count} LLP26 draws accepted in {limit} tries")
        check_seed(seed)
        side = side_cycle[len(sources) % len(side_cycle)]
        try:
            image, info = rasterize(model.draw(seed, sd, side), spacing, models_dir)
        except DrawRefused as e:
            refused.append((seed, str(e)))
            log(f"LLP26 seed {seed} ({side}) refused: {e}")
            seed += 1
            continue
        path = out_dir / f"llp26-{side}-{seed}.nrrd"
        sitk.WriteImage(image, str(path), True)
        vols = info["volumes_ml"]
        note = (f"LLP26 shape-model {side} knee, seed {seed}, modes at N(0, {sd}^2); femur {vols['femur']} ml, "
                f"tibia {vols['tibia']} ml, patella {vols['patella']} ml, fibula {vols['fibula']} ml")
        kwargs = dict(id=f"{MAP_ID_PREFIX}{side}_{seed:04d}", path=path, role=role, labels=dict(T.MSKT_LABELS), note=note)
        if has_meta:
            kwargs["meta"] = {"source": SOURCE, "licence": LICENCE, "seed": seed, "side": side, "modes_sd": sd}
        sources.append(SourceMap(**kwargs))
        seed += 1
    tried = seed - first_seed
    per = (time.perf_counter() - start) / max(len(sources), 1)
    reasons: dict[str, int] = {}
    for _, why in refused:
        for pair in why.split(": ", 1)[1].split(" (limit")[0].split(", "):
            reasons[pair.split(" ")[0]] = reasons.get(pair.split(" ")[0], 0) + 1
    log(f"LLP26: {len(sources)} maps accepted of {tried} draws ({len(refused)} refused for bone overlap > "
        f"{OVERLAP_LIMIT_ML} ml: {reasons or 'none'}); {per:.1f} s per accepted map")
    return sources


def main() -> None:
    """``python -m trainer.shapemodel OUT_DIR COUNT [FIRST_SEED]``: write LLP26 label maps."""
    if len(sys.argv) < 3:
        sys.exit("usage: python -m trainer.shapemodel OUT_DIR COUNT [FIRST_SEED]")
    try:
        write_shape_maps(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 0)
    except DatasetError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
