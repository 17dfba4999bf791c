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
* The ``.mesh`` files are "flat" GIAS ensemble meshes: elements (Lagrange ``quad_Lm_Ln`` with (m+1)(n+1)
  points, xi1 fastest; ``simplex_Ln_Ln`` with (n+1)(n+2)/2 points, row by row) and a symmetric list of
  coincident element points. Global node numbers are given in order of first appearance (elements in numeric
  order, their points in order); this reproduces the file's ``number_of_points`` and gives closed,
  edge-manifold surfaces (every edge shared by exactly two triangles) for all three meshes.
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

Refusals: the model's bones interpenetrate far more than expected. Even the MEAN shape's femoral condyles
sink ~16 mm into the tibial plateau (femur/tibia overlap 36 ml: the tibia+fibula must move 16-18 mm distally
to clear it), and with every mode at N(0, 1) only 32 of 200 draws (16 %) stay under ``OVERLAP_LIMIT_ML``
(femur/tibia overlap: median 39 ml, 90th percentile 88 ml, max 112 ml; reasons among the 168 refused:
femur/tibia 168, femur/fibula 36, femur/patella 15, patella/tibia 1). The joint's configuration varies
widely across the 26 limbs. Accepted N(0, 1) draws, cropped: femur 150-180 ml, tibia 110-120 ml, patella
8-11 ml, fibula 11-14 ml, cartilage 0.5-3 ml each (only where the bones meet within 6 mm).
The mean shape: whole closed meshes femur 483 ml (the whole femur, closed at the hip: no cap needed), tibia
304 ml, patella 16.2 ml, fibula 51.6 ml; voxelized in the knee crop: femur 220, tibia 181, patella 16.2,
fibula 20.0 ml (but the mean itself is refused for its 36 ml femur/tibia overlap).
"""
from __future__ import annotations

import importlib
import io
import json
import pickle
import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from KneeSegmentationLib.errors import DatasetError
from . import tissues as T
from .dataset import SourceMap
from .mskt import cache_dir_default
from .sdist import Sdist, ensure_sdist, extract

PACKAGE = "musculoskeletal-models"
VERSION = "0.2.4"
SDIST = Sdist(PACKAGE, VERSION, "4aec4179318a084b1de3a4fe5553803bf13134fbb011ca244a24300f4fedfb1c")
SDIST_NAME = SDIST.file_name
ARCHIVE_ROOT = SDIST.archive_root
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

OVERLAP_LIMIT_ML = 1.0
TRAIN_FIRST_SEED = 0
VAL_FIRST_SEED = 100000
TEST_FIRST_SEED = 200000
HALF_LENGTH_MM = 130.0  # kept along the long axis on each side of the femorotibial joint
MARGIN_MM = 40.0  # around the bones' cross-section
CARTILAGE_MM = 2.0  # cartilage: outside a bone, within this of its surface ...
CARTILAGE_REACH_MM = 6.0  # ... and within this of the opposing bone
BONE_LABELS = {"femur": 5, "tibia": 6, "patella": 7, "fibula": 8}
CARTILAGE = (("femur", ("tibia", "patella"), 1), ("tibia", ("femur",), 2), ("patella", ("femur",), 4))
SIDES = ("left", "right")


class DrawRefused(DatasetError):
    """A shape-model draw whose bones interpenetrate by more than ``OVERLAP_LIMIT_ML``."""

    def __init__(self, message: str, overlaps: dict[str, float]):
        super().__init__(message)
        self.overlaps = overlaps


# ------------------------------------------------------------------------------------------------ fetch
def fetch_llp26(cache_dir: Path | None = None) -> Path:
    """The extracted ``models`` folder (holding ``shape_models/`` and ``atlas_meshes/``); fetched on first use."""
    cache = Path(cache_dir) if cache_dir is not None else cache_dir_default()
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


# ------------------------------------------------------------------------------------------------ meshes
def _lagrange_1d(order: int, t: np.ndarray) -> np.ndarray:
    """(len(t), order+1) Lagrange basis on equispaced nodes of [0, 1]."""
    nodes = np.linspace(0, 1, order + 1)
    out = np.ones((len(t), order + 1))
    for i in range(order + 1):
        for j in range(order + 1):
            if j != i:
                out[:, i] *= (t - nodes[j]) / (nodes[i] - nodes[j])
    return out


def _quad_element(m: int, n: int, div: int) -> tuple[np.ndarray, np.ndarray]:
    """Basis (sub-points, (m+1)(n+1)) on a (div+1)² sub-grid and its triangles."""
    t = np.linspace(0, 1, div + 1)
    b1, b2 = _lagrange_1d(m, t), _lagrange_1d(n, t)
    basis = np.einsum("ai,bj->baji", b1, b2).reshape((div + 1) ** 2, (n + 1) * (m + 1))  # xi1 fastest
    idx = np.arange((div + 1) ** 2).reshape(div + 1, div + 1)  # [xi2, xi1]
    a, b, c, d = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel(), idx[1:, 1:].ravel(), idx[1:, :-1].ravel()
    tris = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])
    return basis, tris


def _simplex_element(n: int, div: int) -> tuple[np.ndarray, np.ndarray]:
    """Basis of the order-n Lagrange triangle (nodes row by row: xi1 fastest, xi2 rows) on a sub-grid."""
    def grid(k):
        return [(i, j) for j in range(k + 1) for i in range(k + 1 - j)]

    nodes, subs = grid(n), grid(div)
    l1 = np.array([i for i, _ in subs]) / div
    l2 = np.array([j for _, j in subs]) / div
    l0 = 1 - l1 - l2
    basis = np.ones((len(subs), len(nodes)))
    for col, (i, j) in enumerate(nodes):
        for lam, power in ((l1, i), (l2, j), (l0, n - i - j)):
            for k in range(power):
                basis[:, col] *= (n * lam - k) / (k + 1)
    where = {p: q for q, p in enumerate(subs)}
    tris = []
    for j in range(div):
        for i in range(div - j):
            tris.append((where[i, j], where[i + 1, j], where[i, j + 1]))
            if i + j < div - 1:
                tris.append((where[i + 1, j], where[i + 1, j + 1], where[i, j + 1]))
    return basis, np.array(tris)


@dataclass(frozen=True)
class Surface:
    """How to turn a mesh's nodes into a closed triangle surface: points = basis @ nodes, merged."""

    name: str
    node_ids: np.ndarray  # mesh nodes this surface uses
    groups: tuple  # (basis (S, P), element node ids (E, P) into the mesh's nodes)
    merge: np.ndarray  # per evaluated point (all groups, all elements, in order): its merged index
    triangles: np.ndarray  # (T, 3) into merged points

    def evaluate(self, nodes: np.ndarray) -> np.ndarray:
        """Merged surface points (K, 3) for the mesh's node coordinates ``nodes``."""
        pts = np.concatenate([np.einsum("sp,epd->esd", basis, nodes[ids]).reshape(-1, 3)
                              for basis, ids in self.groups])
        out = np.empty((int(self.merge.max()) + 1, 3))
        out[self.merge] = pts
        return out


def read_mesh(stem: Path) -> list[tuple[str, np.ndarray]]:
    """[(basis name, global node ids of the element's points)] of a flat GIAS mesh (``.mesh`` + ``.ens``)."""
    try:
        mesh = json.loads(Path(f"{stem}.mesh").read_text())
        ens = json.loads(Path(f"{stem}.ens").read_text())
        kinds = {int(k): v.split()[-1] for k, v in mesh["elements"].items()}
        basis = {k: ens["basis"][t] for k, t in kinds.items()}
        links: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for key, value in mesh["connectivity"].items():
            a = tuple(int(x) for x in key.split("_"))
            links[a] = [tuple(int(x) for x in v.split("_")) for v in value.split()]
        expected = int(mesh["number_of_points"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DatasetError(f"{stem}: unreadable atlas mesh ({type(e).__name__}: {e})") from e
    number: dict[tuple[int, int], int] = {}
    elements, got = [], 0
    for k in sorted(basis):
        kind = basis[k]
        orders = [int(p[1:]) for p in kind.split("_")[1:]]
        count = (orders[0] + 1) * (orders[1] + 1) if kind.startswith("quad") else (orders[0] + 1) * (orders[0] + 2) // 2
        ids = []
        for p in range(count):
            if (k, p) not in number:
                new, stack, got = got, [(k, p)], got + 1
                group = {(k, p)}
                while stack:
                    for q in links.get(stack.pop(), []):
                        if q not in group:
                            group.add(q)
                            stack.append(q)
                for q in group:
                    number[q] = new
            ids.append(number[(k, p)])
        elements.append((kind, np.array(ids)))
    if got != expected:
        raise DatasetError(f"{stem}: numbering gives {got} nodes, the file says {expected}")
    return elements


def _components(elements: list[tuple[str, np.ndarray]]) -> list[list[int]]:
    """Element indices per connected component (sharing nodes), largest first."""
    parent = list(range(len(elements)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[int, int] = {}
    for e, (_, ids) in enumerate(elements):
        for n in ids.tolist():
            if n in owner:
                parent[find(e)] = find(owner[n])
            else:
                owner[n] = e
    comps: dict[int, list[int]] = {}
    for e in range(len(elements)):
        comps.setdefault(find(e), []).append(e)
    return sorted(comps.values(), key=len, reverse=True)


def _build_surface(name: str, elements: list[tuple[str, np.ndarray]], mean_nodes: np.ndarray) -> Surface:
    groups, tris, offset = [], [], 0
    for kind in sorted({k for k, _ in elements}):
        orders = [int(p[1:]) for p in kind.split("_")[1:]]
        div = 2 * max(orders)
        basis, local = _quad_element(orders[0], orders[1], div) if kind.startswith("quad") else \
            _simplex_element(orders[0], div)
        ids = np.stack([i for k, i in elements if k == kind])
        groups.append((basis, ids))
        tris.append((local[None] + offset + basis.shape[0] * np.arange(len(ids))[:, None, None]).reshape(-1, 3))
        offset += basis.shape[0] * len(ids)
    pts = np.concatenate([np.einsum("sp,epd->esd", b, mean_nodes[i]).reshape(-1, 3) for b, i in groups])
    # Points on shared element edges coincide exactly (the edge's geometry depends on its nodes only).
    _, merge = np.unique(np.round(pts, 5), axis=0, return_inverse=True)
    merge = merge.ravel()
    t = merge[np.concatenate(tris)]
    t = t[(t[:, 0] != t[:, 1]) & (t[:, 1] != t[:, 2]) & (t[:, 0] != t[:, 2])]  # collapsed at degenerate corners
    node_ids = np.unique(np.concatenate([i for _, i in elements]))
    return Surface(name, node_ids, tuple(groups), merge, t)


def open_edges(triangles: np.ndarray) -> int:
    """Edges not shared by exactly two triangles (0 for a closed, edge-manifold surface)."""
    e = np.sort(np.concatenate([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]]), axis=1)
    _, counts = np.unique(e, axis=0, return_counts=True)
    return int(np.sum(counts != 2))


@lru_cache(maxsize=4)
def _surfaces(models_dir: str) -> dict[str, tuple[str, Surface]]:
    """bone -> (mesh name, surface). The tibia+fibula mesh splits into two components: the larger is the tibia."""
    model = load_model(Path(models_dir))
    mean = model.draw(0, sd=0)
    out = {}
    for mesh, stem in MESH_FILES.items():
        elements = read_mesh(Path(models_dir).parent.parent.parent / stem)
        if mesh == "tibia_fibula":
            comps = _components(elements)
            if len(comps) != 2:
                raise DatasetError(f"{stem}: expected tibia and fibula components, found {len(comps)}")
            for bone, comp in zip(("tibia", "fibula"), comps):
                out[bone] = (mesh, _build_surface(bone, [elements[i] for i in comp], mean[mesh]))
        else:
            out[mesh] = (mesh, _build_surface(mesh, elements, mean[mesh]))
    return out


@lru_cache(maxsize=4)
def _load_model_cached(path: str) -> ShapeModel:
    return load_pc(Path(path))


def load_model(models_dir: Path | None = None) -> ShapeModel:
    """The LLP26 (left) shape model of the fetched sdist."""
    models_dir = Path(models_dir) if models_dir is not None else fetch_llp26()
    return _load_model_cached(str(models_dir / "shape_models" / "LLP26_rigid.pc"))


def bone_surfaces(nodes: dict[str, np.ndarray], models_dir: Path | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """bone -> (points (K, 3), triangles (T, 3)) for node coordinates from ``ShapeModel.draw``. (A mirrored,
    right limb has its triangles' orientation reversed; voxelization does not depend on it.)"""
    models_dir = Path(models_dir) if models_dir is not None else fetch_llp26()
    out = {}
    for bone, (mesh, surface) in _surfaces(str(models_dir)).items():
        out[bone] = (surface.evaluate(nodes[mesh]), surface.triangles)
    return out


# ------------------------------------------------------------------------------------------------ voxels
def _stencil(points: np.ndarray, triangles: np.ndarray, origin: np.ndarray, spacing: float,
             lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Inside mask (z, y, x) of a closed surface on voxels lo..hi (inclusive indices) of the grid."""
    import vtk
    from vtk.util.numpy_support import numpy_to_vtk, numpy_to_vtkIdTypeArray, vtk_to_numpy

    poly = vtk.vtkPolyData()
    vpts = vtk.vtkPoints()
    vpts.SetData(numpy_to_vtk(np.ascontiguousarray(points, float), deep=True))
    poly.SetPoints(vpts)
    cells = vtk.vtkCellArray()
    conn = numpy_to_vtkIdTypeArray(np.ascontiguousarray(triangles.ravel(), np.int64), deep=True)
    offsets = numpy_to_vtkIdTypeArray(np.arange(0, 3 * len(triangles) + 1, 3, dtype=np.int64), deep=True)
    cells.SetData(offsets, conn)
    poly.SetPolys(cells)
    stencil = vtk.vtkPolyDataToImageStencil()
    stencil.SetInputData(poly)
    stencil.SetOutputOrigin(*origin.tolist())
    stencil.SetOutputSpacing(spacing, spacing, spacing)
    stencil.SetOutputWholeExtent(int(lo[0]), int(hi[0]), int(lo[1]), int(hi[1]), int(lo[2]), int(hi[2]))
    stencil.SetTolerance(0)
    image = vtk.vtkImageStencilToImage()
    image.SetInputConnection(stencil.GetOutputPort())
    image.SetInsideValue(1)
    image.SetOutsideValue(0)
    image.SetOutputScalarTypeToUnsignedChar()
    image.Update()
    shape = (hi - lo + 1)[::-1]
    return vtk_to_numpy(image.GetOutput().GetPointData().GetScalars()).reshape(tuple(shape)).astype(bool)


@dataclass
class Crop:
    """The identity-direction LPS grid a draw is voxelized on."""

    origin: np.ndarray  # LPS of voxel (0, 0, 0)
    spacing: float
    size: np.ndarray  # (x, y, z)
    joint_z: float


def knee_crop(surfaces: dict[str, tuple[np.ndarray, np.ndarray]], spacing: float = 1.0) -> Crop:
    """±HALF_LENGTH_MM along z around the femorotibial joint, the bones' cross-section there + MARGIN_MM."""
    femur, tibia = surfaces["femur"][0], surfaces["tibia"][0]
    joint_z = 0.5 * (femur[:, 2].min() + tibia[:, 2].max())
    z0, z1 = joint_z - HALF_LENGTH_MM, joint_z + HALF_LENGTH_MM
    near = np.concatenate([p[(p[:, 2] >= z0) & (p[:, 2] <= z1)] for p, _ in surfaces.values()])
    lo = np.array([*(near[:, :2].min(0) - MARGIN_MM), z0])
    hi = np.array([*(near[:, :2].max(0) + MARGIN_MM), z1])
    origin = np.floor(lo / spacing) * spacing
    size = (np.ceil((hi - origin) / spacing) + 1).astype(int)
    return Crop(origin, float(spacing), size, float(joint_z))


def voxelize(surfaces: dict[str, tuple[np.ndarray, np.ndarray]], crop: Crop) -> dict[str, np.ndarray]:
    """bone -> boolean mask (z, y, x) on ``crop``."""
    masks = {}
    shape = tuple(crop.size[::-1])
    for bone, (pts, tris) in surfaces.items():
        lo = np.floor((pts.min(0) - crop.origin) / crop.spacing).astype(int) - 1
        hi = np.ceil((pts.max(0) - crop.origin) / crop.spacing).astype(int) + 1
        lo, hi = np.maximum(lo, 0), np.minimum(hi, crop.size - 1)
        mask = np.zeros(shape, bool)
        if np.all(hi >= lo):
            mask[lo[2]:hi[2] + 1, lo[1]:hi[1] + 1, lo[0]:hi[0] + 1] = _stencil(pts, tris, crop.origin, crop.spacing,
                                                                               lo, hi)
        masks[bone] = mask
    return masks


def overlap_ml(masks: dict[str, np.ndarray], spacing: float = 1.0) -> dict[str, float]:
    """Pairwise overlap volumes (ml) of the bone masks, keyed "a/b"."""
    names = list(masks)
    voxel_ml = spacing ** 3 / 1000.0
    return {f"{a}/{b}": float(np.count_nonzero(masks[a] & masks[b]) * voxel_ml)
            for i, a in enumerate(names) for b in names[i + 1:]}


def check_overlap(masks: dict[str, np.ndarray], spacing: float = 1.0,
                  limit_ml: float = OVERLAP_LIMIT_ML) -> dict[str, float]:
    """The pairwise overlaps; raises DrawRefused if any exceeds ``limit_ml``."""
    overlaps = overlap_ml(masks, spacing)
    bad = {k: v for k, v in overlaps.items() if v > limit_ml}
    if bad:
        raise DrawRefused("bones overlap: " + ", ".join(f"{k} {v:.1f} ml" for k, v in sorted(bad.items()))
                          + f" (limit {limit_ml} ml)", bad)
    return overlaps


def _distance_outside(mask: np.ndarray, spacing: float) -> np.ndarray:
    if not mask.any():
        return np.full(mask.shape, np.inf, np.float32)
    img = sitk.GetImageFromArray(mask.astype(np.uint8))
    img.SetSpacing((spacing,) * 3)
    return sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(img, insideIsPositive=False, squaredDistance=False,
                                                               useImageSpacing=True))


def _box(mask: np.ndarray) -> np.ndarray | None:
    idx = np.argwhere(mask)
    return None if not len(idx) else np.array([idx.min(0), idx.max(0)])


def label_map(masks: dict[str, np.ndarray], crop: Crop) -> sitk.Image:
    """mskt-valued uint8 map: bones 5-8 and approximate femoral (1), tibial (2) and patellar (4) cartilage."""
    arr = np.zeros(tuple(crop.size[::-1]), np.uint8)
    for bone in ("fibula", "patella", "tibia", "femur"):  # residual (<= limit) overlaps go to the later bone
        arr[masks[bone]] = BONE_LABELS[bone]
    bone_any = arr > 0
    # Cartilage lies where the femur meets the tibia or patella: compute distances only in that box.
    reach = int(np.ceil((CARTILAGE_REACH_MM + CARTILAGE_MM) / crop.spacing)) + 1
    boxes = {b: _box(masks[b]) for b in ("femur", "tibia", "patella")}
    parts = []
    for other in ("tibia", "patella"):
        if boxes["femur"] is None or boxes[other] is None:
            continue
        lo = np.maximum(boxes["femur"][0], boxes[other][0]) - reach
        hi = np.minimum(boxes["femur"][1], boxes[other][1]) + reach
        if np.all(hi >= lo):
            parts.append((lo, hi))
    if not parts:
        return _image(arr, crop)
    lo = np.maximum(np.min([p[0] for p in parts], 0), 0)
    hi = np.minimum(np.max([p[1] for p in parts], 0), np.array(arr.shape) - 1)
    sl = tuple(slice(a, b + 1) for a, b in zip(lo, hi))
    dist = {b: _distance_outside(masks[b][sl], crop.spacing) for b in ("femur", "tibia", "patella")}
    free = ~bone_any[sl]
    nearest = np.argmin(np.stack([dist["femur"], dist["tibia"], dist["patella"]]), axis=0)
    sub = arr[sl]
    for k, (bone, opposite, value) in enumerate(CARTILAGE):
        near_other = np.min(np.stack([dist[o] for o in opposite]), axis=0) <= CARTILAGE_REACH_MM
        sub[free & (dist[bone] <= CARTILAGE_MM) & near_other & (nearest == k)] = value
    return _image(arr, crop)


def _image(arr: np.ndarray, crop: Crop) -> sitk.Image:
    image = sitk.GetImageFromArray(arr)
    image.SetOrigin(crop.origin.tolist())
    image.SetSpacing((crop.spacing,) * 3)
    image.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    return image


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
        kwargs = dict(id=f"llp26_{side}_{seed:04d}", path=path, role=role, labels=dict(T.MSKT_LABELS), note=note)
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
