"""A tiny model trained on the phantom in seconds, so pipeline tests exercise real weights whose behaviour
is measured (Dice on the phantom), not assumed. Uses the library's own network, preprocessing and model
format, like the real trainer."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from KneeSegmentationLib.modelfile import ModelCard, Preprocessing, save_model
from KneeSegmentationLib.network import UNet3D, UNetConfig
from KneeSegmentationLib.preprocess import model_grid_around, prepare_input

from phantom import phantom_image, phantom_labels

TINY_SPACING = 5.0
TINY_PATCH = 24
NORMALIZATION = {"lower_percentile": 1.0, "upper_percentile": 99.0}


def _sample(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A phantom on the model grid with the knee shifted at random, normalized like at inference."""
    center = rng.uniform(-20, 20, 3)
    grid = model_grid_around((0, 0, 0), (TINY_SPACING,) * 3, (TINY_PATCH,) * 3)
    labels = phantom_labels(grid, center)
    image = phantom_image(labels, seed=int(rng.integers(1 << 30)))
    x = prepare_input(image, grid, NORMALIZATION)
    import SimpleITK as sitk

    return x, sitk.GetArrayFromImage(labels).astype(np.int64)


def train_tiny_model(root: Path, steps: int = 40, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    config = UNetConfig(features=(8, 16))
    net = UNet3D(config)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    batch = [_sample(rng) for _ in range(8)]
    for step in range(steps):
        x, y = batch[step % len(batch)]
        logits = net(torch.from_numpy(x)[None, None])
        loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y)[None])
        opt.zero_grad()
        loss.backward()
        opt.step()
    card = ModelCard(
        name="tiny-phantom",
        version=0,
        network=config,
        preprocessing=Preprocessing((TINY_SPACING,) * 3, (TINY_PATCH,) * 3, "LPS", NORMALIZATION),
        description="Test model trained on an analytic phantom; not for real images.",
        training={"steps": steps, "final_loss": float(loss.detach())},
    )
    return save_model(net.eval(), card, root)
