"""A tiny model trained on the analytic phantom, so pipeline tests exercise real weights whose behaviour is
measured (Dice on the phantom), not assumed. It uses the library's own network, preprocessing and model
format, like the real trainer. Training takes a few minutes on 2 cores, so the result is kept in
``Testing/Data/Models/tiny-phantom/v1`` (about 100 KB) and regenerated with

    python Testing/Python/tinymodel.py [--steps 300]

Tests check its quality on the phantom in every geometry, so a bad regeneration fails loudly."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import SimpleITK as sitk

from KneeSegmentationLib.models.card import ModelCard, ModelPlan, Preprocessing
from KneeSegmentationLib.models.store import save_model
from KneeSegmentationLib.models.network import UNetConfig, build_network
from KneeSegmentationLib.segment.preprocess import model_grid_around, prepare_input

from phantom import centered_grid, phantom_image, phantom_labels

TINY_SPACING = 5.0
TINY_PATCH = 24
TRAIN_CROP = TINY_PATCH  # whole windows: percentile normalization then sees what inference sees
NORMALIZATION = {"lower_percentile": 1.0, "upper_percentile": 99.0}


def _sample(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A phantom acquisition with a random field of view (often smaller than the window, knee off-centre),
    resampled onto the model window and normalized exactly as at inference."""
    window = model_grid_around((0, 0, 0), (TINY_SPACING,) * 3, (TRAIN_CROP,) * 3)
    knee = rng.uniform(-12, 12, 3)
    fov_center = knee + rng.uniform(-15, 15, 3)
    fov_size = rng.uniform(60, 130, 3)
    spacing = rng.uniform(1.5, 4.0, 3)
    acquisition = centered_grid(np.round(fov_size / spacing).astype(int), spacing, fov_center)
    image = phantom_image(phantom_labels(acquisition, knee), seed=int(rng.integers(1 << 30)))
    x = prepare_input(image, window, NORMALIZATION)
    y = sitk.GetArrayFromImage(phantom_labels(window, knee)).astype(np.int64)
    y[x == 0] = 0  # outside the acquired field of view there is nothing to find
    return x, y


def _soft_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    prob = torch.softmax(logits, 1)
    onehot = torch.nn.functional.one_hot(target, prob.shape[1]).permute(0, 4, 1, 2, 3).float()
    inter = (prob * onehot).sum((0, 2, 3, 4))
    return 1 - ((2 * inter + 1) / (prob.sum((0, 2, 3, 4)) + onehot.sum((0, 2, 3, 4)) + 1)).mean()


def train_tiny_model(root: Path, steps: int = 300, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    plan = ModelPlan(UNetConfig(features=(8, 16)),
                     Preprocessing((TINY_SPACING,) * 3, (TINY_PATCH,) * 3, "LPS", NORMALIZATION))
    net = build_network(plan)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    batch = [_sample(rng) for _ in range(32)]
    for step in range(steps):
        x, y = batch[step % len(batch)]
        logits = net(torch.from_numpy(x)[None, None])
        target = torch.from_numpy(y)[None]
        loss = torch.nn.functional.cross_entropy(logits, target) + _soft_dice_loss(logits, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    card = ModelCard(
        name="tiny-phantom",
        version=0,
        plan=plan,
        description="Test model trained on an analytic phantom; not for real images.",
        training={"steps": steps, "final_loss": float(loss.detach())},
    )
    return save_model(net.eval(), card, root)


TEST_MODELS = Path(__file__).resolve().parents[1] / "Data" / "Models"


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--root", type=Path, default=TEST_MODELS)
    args = parser.parse_args()
    print(train_tiny_model(args.root, steps=args.steps))
