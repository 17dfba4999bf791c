"""Tiny label maps, datasets and corrected cases for the trainer's tests (seconds, not minutes).

The label maps are the analytic phantom (femur, tibia, fibula cylinders) written with the mskt label values
(5 femur, 6 tibia, 8 fibula, 1 femoral cartilage), in a sagittal PIR orientation like the real maps.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from phantom import centered_grid, phantom, phantom_labels

from trainer.config import TrainConfig
from trainer.dataset import SourceMap, prepare

SAGITTAL_PIR = (0, 0, -1, 1, 0, 0, 0, -1, 0)
TINY_PREPARE_SPACING = 2.0
TINY_SPACING, TINY_CROP, TINY_PATCH = 4.0, (16, 16, 16), (24, 24, 24)


def write_label_map(path: Path, with_fibula: bool, size=(36, 44, 40), spacing=(2.2, 2.0, 2.0)) -> Path:
    grid = centered_grid(size, spacing, direction=np.reshape(SAGITTAL_PIR, (3, 3)))
    lab = sitk.GetArrayFromImage(phantom_labels(grid))
    out = np.zeros(lab.shape, np.uint8)
    out[lab == 1] = 5
    out[lab == 2] = 6
    if with_fibula:
        out[lab == 3] = 8
    # a cartilage layer: femur voxels just above the tibia
    femur = out == 5
    below = np.roll(femur, 2, axis=1) & ~femur  # any axis works; it only needs to be a thin tissue
    out[below & (out == 0)] = 1
    img = sitk.GetImageFromArray(out)
    img.CopyInformation(grid)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))
    return path


def tiny_sources(folder: Path) -> list[SourceMap]:
    return [SourceMap("train_fib", write_label_map(folder / "train.nrrd", True), "train"),
            SourceMap("val_nofib", write_label_map(folder / "val.nrrd", False), "val")]


def make_tiny_dataset(folder: Path) -> Path:
    return prepare(tiny_sources(folder / "sources"), folder / "dataset", spacing=TINY_PREPARE_SPACING,
                   log=lambda *_: None)


def tiny_config(dataset: Path, run: Path, **kw) -> TrainConfig:
    base = dict(dataset=str(dataset), run_dir=str(run), features=(4, 8), spacing_mm=TINY_SPACING,
                patch=TINY_PATCH, crop=TINY_CROP, batch=2, lr=3e-3, warmup=2, steps=4, val_every=1000,
                val_cases=2, checkpoint_every=2, log_every=1, seed=3, threads=1)
    base.update(kw)
    return TrainConfig(**base)


def write_case(folder: Path, seed: int, label_dtype=sitk.sitkUInt8, shift_label_origin: float = 0.0,
               empty: bool = False) -> Path:
    """A corrected case: phantom image + labels (0-3) + case.json, in a sagittal geometry."""
    image, labels = phantom(size=(20, 40, 36), spacing=(3.0, 2.0, 2.0),
                            direction=np.reshape(SAGITTAL_PIR, (3, 3)), seed=seed)
    if empty:
        labels = labels * 0
    labels = sitk.Cast(labels, label_dtype)
    if shift_label_origin:
        labels.SetOrigin([o + shift_label_origin for o in labels.GetOrigin()])
    folder.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(folder / "image.nrrd"))
    sitk.WriteImage(labels, str(folder / "label.nrrd"))
    (folder / "case.json").write_text(json.dumps({"id": folder.name, "note": "test case"}))
    return folder
