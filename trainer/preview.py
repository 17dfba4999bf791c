"""``preview``: a PNG grid of generator samples (three central planes each, bones outlined), and its speed."""
from __future__ import annotations

import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from KneeSegmentationLib.constants import BONES  # noqa: E402

from .generator import Generator, Sample  # noqa: E402

PLANES = (("axial", 0), ("coronal", 1), ("sagittal", 2))  # array axis (z, y, x) cut by each plane


def _plane(a: np.ndarray, axis: int, index: int | None = None) -> np.ndarray:
    index = a.shape[axis] // 2 if index is None else index
    cut = np.take(a, index, axis=axis)
    return cut[::-1] if axis != 0 else cut  # superior up in coronal/sagittal views (z grows superiorly)


def draw_samples(samples: list[Sample], path: Path, title: str = "") -> Path:
    """Writes ``path``: one row per sample, three planes through the crop centre, bone outlines in colour."""
    fig, axes = plt.subplots(len(samples), 3, figsize=(9, 3 * len(samples)), squeeze=False)
    for row, s in zip(axes, samples):
        for ax, (name, axis) in zip(row, PLANES):
            ax.imshow(_plane(s.image, axis), cmap="gray", vmin=0, vmax=1, origin="upper")
            lab = _plane(s.target, axis)
            for bone in BONES:
                if (lab == bone.label).any():
                    ax.contour(lab == bone.label, levels=[0.5], colors=[bone.color], linewidths=0.8)
            ax.set_title(f"{s.map_id} {name}", fontsize=8)
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    tmp.replace(path)
    return path


def measure_speed(generator: Generator, n: int, seed: int = 0) -> tuple[list[Sample], float]:
    """(samples, samples per second) for ``n`` samples drawn with ``seed``."""
    rng, gen = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    generator.sample(rng, gen)  # warm-up (allocations, thread pool)
    t0 = time.perf_counter()
    samples = [generator.sample(rng, gen) for _ in range(n)]
    return samples, n / (time.perf_counter() - t0)
