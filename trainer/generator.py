"""The synthetic MR image generator: a pure function of (label map, random state), rendered in torch on CPU.

SynthSeg's idea, on our model grid: sample the generation labels through a random spatial transform,
paint each tissue with a random Gaussian intensity, and degrade the result like a scanner would, so that
the network learns shape, not contrast. Every range comes from ``ranges.py``. The steps:

1. spatial: crop centre near the knee joint or anywhere along a bone (shafts, fibula, patella), rotation, scaling, left/right mirror and a
   smooth elastic field map output voxels to the label map (nearest neighbour);
2. intensities: per-tissue mean and standard deviation, rendered at ``ranges.SUPERSAMPLE`` x the model
   resolution and averaged down (partial volume at tissue borders, e.g. the thin cortical rim);
3. scanner: slice profile and in-plane blur, bias field, thick slices along a random axis, Rician-like noise
   at the acquired resolution, linear interpolation back to the model grid, gamma;
4. field of view: a random acquired box (knee off-centre, fibula cut at the edge); outside it and outside
   the source map the image is 0, like voxels outside the image at inference;
5. ``KneeSegmentationLib.segment.preprocess.normalize`` with the inference settings.

The target is the model class (``tissues.TARGET_OF``) at each model-grid voxel centre, 0 outside the box;
with ``ranges.SOFT_TARGETS`` also the fraction of each class in each voxel (``Sample.soft``), which training
then uses instead; with ``ranges.FINE_TARGETS`` the class at each supersampled point (``Sample.fine``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from KneeSegmentationLib.constants import NUM_CLASSES
from KneeSegmentationLib.errors import InputError
from KneeSegmentationLib.models.plan import per_axis_spacing
from KneeSegmentationLib.segment.preprocess import normalize

from . import ranges as R
from . import tissues as T
from .dataset import LabelMap

# At ``ranges.SUPERSAMPLE`` 1 this Gaussian blur (in model voxels) stands in for averaging the supersampled image.
PARTIAL_VOLUME_SIGMA_VOX = 0.45
DEFAULT_NORMALIZATION = {"lower_percentile": 1.0, "upper_percentile": 99.0}
MIN_INSIDE_FRACTION = 0.05  # a crop showing less of the image than this is redrawn


@dataclass
class Sample:
    image: np.ndarray  # float32 (z, y, x), normalized like at inference
    target: np.ndarray  # int64 (z, y, x), model classes
    map_id: str
    params: dict
    inside: np.ndarray | None = None  # bool (z, y, x): voxels inside the acquired image
    soft: np.ndarray | None = None  # float32 (classes, z, y, x): class fractions per voxel (``SOFT_TARGETS``)
    fine: np.ndarray | None = None  # uint8 (z, y, x) x SUPERSAMPLE: the class at each supersampled point (``FINE_TARGETS``)


def _rotation(angles_deg: np.ndarray) -> np.ndarray:
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _gaussian_kernel(sigma_vox: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma_vox)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma_vox) ** 2)
    return k / k.sum()


def blur_axis(vol: torch.Tensor, sigma_vox: float, axis: int) -> torch.Tensor:
    """Gaussian blur of a (1, 1, z, y, x) volume along one array axis (0 = z, 1 = y, 2 = x)."""
    if sigma_vox < 0.2:
        return vol
    k = _gaussian_kernel(sigma_vox)
    shape = [1, 1, 1, 1, 1]
    shape[2 + axis] = len(k)
    pad = [0, 0, 0, 0, 0, 0]
    pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = len(k) // 2
    return F.conv3d(F.pad(vol, pad, mode="replicate"), k.view(shape))


def upsampled(mask: torch.Tensor, factor: int) -> torch.Tensor:
    """Each voxel of ``mask`` (z, y, x) repeated ``factor`` times along every axis (its supersampled points)."""
    for axis in range(3):
        mask = mask.repeat_interleave(factor, dim=axis)
    return mask


def map_probabilities(maps: list[LabelMap]) -> np.ndarray:
    """How often each map is drawn: the real maps share ``REAL_MAP_SHARE`` of the samples when shape-model
    draws (maps whose manifest entry records a seed) are present too, otherwise all maps are equally likely."""
    drawn = np.array(["seed" in (m.entry.get("meta") or {}) for m in maps])
    if drawn.all() or not drawn.any():
        return np.full(len(maps), 1 / len(maps))
    return np.where(drawn, (1 - R.REAL_MAP_SHARE) / drawn.sum(), R.REAL_MAP_SHARE / (~drawn).sum())


class Generator:
    """Renders training samples from prepared label maps on a model grid of ``spacing`` mm.

    ``spacing`` is one number (isotropic) or three in the grid's (x, y, z) order, as a model's plan gives it;
    ``crop`` is the sample size in voxels (z, y, x). Randomness comes only from the ``np.random.Generator``
    and ``torch.Generator`` passed to ``sample``, so a seed fixes every sample.
    """

    def __init__(self, maps: list[LabelMap], spacing: float | Sequence[float], crop: tuple[int, int, int],
                 normalization: dict | None = None, bone_crop_p: float | None = None) -> None:
        if not maps:
            raise ValueError("the generator needs at least one label map")
        self.maps = maps
        self.spacing = per_axis_spacing(spacing)  # x, y, z
        self._spacing_zyx = self.spacing[::-1]  # along the array axes
        self.crop = tuple(int(c) for c in crop)
        self.normalization = dict(normalization or DEFAULT_NORMALIZATION)
        self.bone_crop_p = R.BONE_CROP_P if bone_crop_p is None else bone_crop_p  # read now: a run may override it
        self.supersample, self.soft_targets = int(R.SUPERSAMPLE), bool(R.SOFT_TARGETS)
        self.fine_targets = bool(R.FINE_TARGETS)
        if self.supersample < 1 or ((self.soft_targets or self.fine_targets) and self.supersample < 2):
            raise ValueError(f"SUPERSAMPLE {self.supersample}: a whole number >= 1 is expected, >= 2 with "
                             "SOFT_TARGETS or FINE_TARGETS (they need several label samples per voxel)")
        if self.soft_targets and self.fine_targets:
            raise ValueError("SOFT_TARGETS and FINE_TARGETS are two forms of one target: choose one")
        self.map_p = map_probabilities(maps)
        # Offsets (z, y, x order) of voxel positions of the fine output grid, centred on 0, in mm.
        ss = self.supersample
        self._fine = [self._axis(n * ss, s / ss) for n, s in zip(self.crop, self._spacing_zyx)]

    @staticmethod
    def _axis(n: int, step: float) -> torch.Tensor:
        return (torch.arange(n, dtype=torch.float32) - (n - 1) / 2) * step

    # --- spatial ------------------------------------------------------------------------------------
    def _choose_center(self, m: LabelMap, rng: np.random.Generator) -> np.ndarray:
        bones = [b for b in R.BONE_CROP_WEIGHTS if len(m.bone_points.get(b, ()))]
        if bones and rng.random() < self.bone_crop_p:
            w = np.array([R.BONE_CROP_WEIGHTS[b] for b in bones])
            points = m.bone_points[bones[int(rng.choice(len(bones), p=w / w.sum()))]]
            return points[rng.integers(len(points))] + rng.uniform(-R.BONE_CROP_JITTER_MM, R.BONE_CROP_JITTER_MM, 3)
        return m.joint_center + rng.uniform(-R.CROP_OFFSET_MM, R.CROP_OFFSET_MM, 3)

    @staticmethod
    def _labels_at(m: LabelMap, grid: torch.Tensor, pool: int = 1) -> torch.Tensor:
        """Nearest-neighbour labels of ``m`` at a normalized sampling ``grid`` (1, Z, Y, X, 3), averaged over
        ``pool``^3 grid points first if ``pool`` > 1. Only the box of the map the grid reaches is converted to
        float, so hundreds of maps stay in memory as uint8."""
        if pool > 1:
            grid = F.avg_pool3d(grid.permute(0, 4, 1, 2, 3), pool).permute(0, 2, 3, 4, 1)
        size = torch.tensor(m.labels.shape[::-1], dtype=torch.float32)  # x, y, z
        index = (grid.reshape(-1, 3) + 1) / 2 * (size - 1)
        lo = torch.clamp(torch.floor(index.min(0).values) - 1, min=0).long()
        hi = torch.minimum(torch.ceil(index.max(0).values) + 2, size).long()
        if torch.any(hi - lo < 2):
            return torch.zeros(grid.shape[1:4], dtype=torch.long)
        sub = m.labels[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]]
        vol = torch.from_numpy(sub.astype(np.float32))[None, None]
        local = (index - lo) / (hi - lo - 1).float() * 2 - 1
        out = F.grid_sample(vol, local.view(grid.shape), mode="nearest", padding_mode="zeros", align_corners=True)
        return out.long()[0, 0]

    def _fine_grid(self, m: LabelMap, center: np.ndarray, matrix: np.ndarray, elastic: torch.Tensor) -> torch.Tensor:
        """Normalized sampling grid (1, Z, Y, X, 3) of the fine output grid into map ``m``."""
        uz, uy, ux = self._fine  # output offsets along z, y, x (mm)
        size_xyz = torch.tensor(m.labels.shape[::-1], dtype=torch.float32)
        scale = 2.0 / ((size_xyz - 1) * m.spacing)  # mm -> normalized
        offset = torch.from_numpy((center - m.origin).astype(np.float32)) * scale - 1
        mat = torch.from_numpy(matrix.astype(np.float32)) * scale[:, None]  # rows: x, y, z of the source
        grid = (offset.view(1, 1, 1, 3)
                + ux.view(1, 1, -1, 1) * mat[:, 0].view(1, 1, 1, 3)
                + uy.view(1, -1, 1, 1) * mat[:, 1].view(1, 1, 1, 3)
                + uz.view(-1, 1, 1, 1) * mat[:, 2].view(1, 1, 1, 3))
        if elastic is not None:
            disp = F.interpolate(elastic[None], size=grid.shape[:3], mode="trilinear", align_corners=True)[0]
            grid = grid + disp.permute(1, 2, 3, 0) * scale.view(1, 1, 1, 3)
        return grid[None]

    # --- one sample ---------------------------------------------------------------------------------
    def sample(self, rng: np.random.Generator, gen: torch.Generator, map_index: int | None = None,
               center: np.ndarray | None = None, size: tuple[int, int, int] | None = None) -> Sample:
        """One random sample; ``map_index``/``center``/``size`` pin the map, centre (LPS) and size (validation)."""
        for _ in range(10):
            try:
                return self._sample(rng, gen, map_index, center, size)
            except InputError:  # nothing of the image in view, or constant: draw again
                continue
        raise RuntimeError("the generator could not render a usable sample in 10 attempts")

    def _sample(self, rng, gen, map_index, center, size) -> Sample:
        if size is not None and tuple(size) != self.crop:
            return Generator(self.maps, self.spacing, size, self.normalization, self.bone_crop_p)._sample(
                rng, gen, map_index, center, None)
        mi = int(rng.choice(len(self.maps), p=self.map_p)) if map_index is None else map_index
        m = self.maps[mi]
        c = self._choose_center(m, rng) if center is None else np.asarray(center, float)
        angles = rng.uniform(-R.ROTATION_DEG, R.ROTATION_DEG, 3)
        scales = rng.uniform(1 - R.SCALING, 1 + R.SCALING, 3)
        flip = rng.random() < R.FLIP_LR_P
        matrix = _rotation(angles) @ np.diag(scales) @ np.diag([-1.0 if flip else 1.0, 1.0, 1.0])
        k = R.ELASTIC_CONTROL_POINTS
        elastic = torch.randn((3, k, k, k), generator=gen) * R.ELASTIC_STD_MM

        fine_grid = self._fine_grid(m, c, matrix, elastic)
        labels_fine = self._labels_at(m, fine_grid)
        ss = self.supersample
        labels = labels_fine if ss == 1 else self._labels_at(m, fine_grid, ss)

        means, stds = self._tissue_intensities(rng)
        noise = torch.randn(labels_fine.shape, generator=gen)
        image = means[labels_fine] + stds[labels_fine] * noise
        image = F.avg_pool3d(image[None, None], ss) if ss > 1 else image[None, None]
        params = {"map": m.id, "center": c.tolist(), "angles": angles.tolist(), "scales": scales.tolist(),
                  "flip": bool(flip)}
        image = self._scanner(image, rng, gen, params)[0, 0]

        inside = self._field_of_view(m, c, matrix, rng, params) & (labels != T.OUTSIDE)
        if inside.float().mean() < MIN_INSIDE_FRACTION:
            raise InputError("crop outside the image")
        target = torch.from_numpy(T.TARGET_OF)[labels]
        target[~inside] = 0
        soft = self._class_fractions(labels_fine, inside) if self.soft_targets else None
        fine = self._fine_classes(labels_fine, inside) if self.fine_targets else None
        image = normalize(image.numpy(), inside.numpy(), **self.normalization)
        return Sample(image, target.numpy(), m.id, params, inside.numpy(), soft, fine)

    def _fine_classes(self, labels_fine: torch.Tensor, inside: torch.Tensor) -> np.ndarray:
        """uint8 (z, y, x) x supersample: the model class at each supersampled point; 0 outside the box."""
        classes = torch.from_numpy(T.TARGET_OF.astype(np.uint8))[labels_fine]
        classes[~upsampled(inside, self.supersample)] = 0
        return classes.numpy()

    def _class_fractions(self, labels_fine: torch.Tensor, inside: torch.Tensor) -> np.ndarray:
        """(classes, z, y, x) float32: the share of each model class among a voxel's supersampled labels;
        certain background outside the acquired box, as the hard target."""
        classes = torch.from_numpy(T.TARGET_OF)[labels_fine]
        soft = torch.stack([F.avg_pool3d((classes == c).float()[None, None], self.supersample)[0, 0]
                            for c in range(NUM_CLASSES)])
        soft[:, ~inside] = 0.0
        soft[0, ~inside] = 1.0
        return soft.numpy()

    def _tissue_intensities(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        n = T.NUM_GEN_LABELS
        means = rng.uniform(*R.MEAN_RANGE, n)
        stds = rng.uniform(*R.STD_RANGE, n)
        if rng.random() < R.SAME_MARROW_P:
            means[list(T.MARROWS)] = means[T.FEMUR_MARROW]
        if rng.random() < R.MARROW_LIKE_FAT_P:
            _marrow_follows_fat(means, rng)
        if rng.random() < R.FAT_SUPPRESSED_P:
            means[T.FAT] = rng.uniform(*R.FAT_SUPPRESSED_RANGE)
            _marrow_follows_fat(means, rng)
        if rng.random() < R.BAND_LIKE_FAT_P:
            means[T.FLUID] = means[T.FAT]
        if rng.random() < R.CORTEX_DARK_P:
            means[list(T.CORTICES)] = rng.uniform(*R.CORTEX_DARK_RANGE)
        if rng.random() < R.TENDON_DARK_P:
            means[T.TENDON] = rng.uniform(*R.TENDON_DARK_RANGE)
        if rng.random() < R.AIR_DARK_P:
            means[T.AIR] = rng.uniform(*R.AIR_DARK_RANGE)
        means[T.OUTSIDE] = stds[T.OUTSIDE] = 0.0
        return torch.from_numpy(means.astype(np.float32)), torch.from_numpy(stds.astype(np.float32))

    def _scanner(self, image: torch.Tensor, rng: np.random.Generator, gen: torch.Generator, params: dict) -> torch.Tensor:
        """Blur, bias, thick slices with noise at the acquired resolution, back to the grid, gamma."""
        sigma_mm = rng.uniform(*R.INPLANE_BLUR_SIGMA_MM)
        pv = PARTIAL_VOLUME_SIGMA_VOX if self.supersample == 1 else 0.0
        for axis in range(3):
            image = blur_axis(image, math.hypot(sigma_mm / self._spacing_zyx[axis], pv), axis)
        kb = R.BIAS_CONTROL_POINTS
        bias = torch.randn((1, 1, kb, kb, kb), generator=gen) * R.BIAS_STD
        image = image * torch.exp(F.interpolate(bias, size=image.shape[2:], mode="trilinear", align_corners=True))
        shape = list(image.shape[2:])
        low = list(shape)
        if rng.random() < R.LOWRES_P:
            axis = int(rng.integers(3))
            s = self._spacing_zyx[axis]
            spacing = rng.uniform(*R.SLICE_SPACING_MM)
            thickness = spacing * rng.uniform(*R.SLICE_THICKNESS_FRACTION)
            sigma = math.sqrt(max(thickness**2 - s**2, 0.0)) / 2.355 / s
            image = blur_axis(image, sigma, axis)
            low[axis] = max(2, int(round(shape[axis] * s / spacing)))
            params.update(slice_axis="zyx"[axis], slice_spacing_mm=round(spacing, 2), thickness_mm=round(thickness, 2))
        if low != shape:
            image = F.interpolate(image, size=low, mode="trilinear", align_corners=True)
        sigma_n = rng.uniform(*R.NOISE_STD)
        scale = float(image.max().clamp(min=1e-3))
        real = image + torch.randn(image.shape, generator=gen) * sigma_n * scale
        imag = torch.randn(image.shape, generator=gen) * sigma_n * scale
        image = torch.sqrt(real**2 + imag**2)
        if low != shape:
            image = F.interpolate(image, size=shape, mode="trilinear", align_corners=True)
        gamma = math.exp(rng.normal(0, R.GAMMA_STD))
        image = (image / image.max().clamp(min=1e-6)) ** gamma
        params.update(noise=round(sigma_n, 3), gamma=round(gamma, 3), blur_mm=round(sigma_mm, 2))
        return image

    def _field_of_view(self, m: LabelMap, center: np.ndarray, matrix: np.ndarray, rng: np.random.Generator,
                       params: dict) -> torch.Tensor:
        """Boolean (z, y, x): voxels inside the acquired box (a box in the output frame around the joint)."""
        shape = self.crop
        if rng.random() >= R.FOV_P:
            return torch.ones(shape, dtype=torch.bool)
        joint = np.linalg.solve(matrix, m.joint_center - center)  # joint in output mm (x, y, z)
        box_center = joint + rng.uniform(-R.FOV_OFFSET_MM, R.FOV_OFFSET_MM, 3)
        extent = rng.uniform(*R.FOV_INPLANE_MM, 3)
        slab_axis = int(rng.integers(3))
        extent[slab_axis] = rng.uniform(*R.FOV_SLAB_MM)
        inside = torch.ones(shape, dtype=torch.bool)
        for xyz, n in zip(range(3), shape[::-1]):
            u = self._axis(n, self.spacing[xyz]).numpy()
            ok = torch.from_numpy(np.abs(u - box_center[xyz]) <= extent[xyz] / 2)
            view = [1, 1, 1]
            view[2 - xyz] = n
            inside &= ok.view(view)
        params.update(fov_mm=[round(e) for e in extent])
        return inside


def _marrow_follows_fat(means: np.ndarray, rng: np.random.Generator) -> None:
    """Every marrow takes fat's mean plus a small jitter (adult marrow is fat), in place."""
    jitter = rng.uniform(-R.MARROW_FAT_JITTER, R.MARROW_FAT_JITTER, len(T.MARROWS))
    means[list(T.MARROWS)] = np.clip(means[T.FAT] + jitter, *R.MEAN_RANGE)
