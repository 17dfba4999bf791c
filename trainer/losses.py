"""Dice + cross-entropy, the loss that lets a small bone (the fibula) count as much as a large one.

Class imbalance (the 2017 thesis's multi-class net never found the fibula): the soft Dice term is averaged
with equal weight over the three bones, whatever their size, so the fibula contributes a third of it; the
cross-entropy gets per-class weights (``DEFAULT_CLASS_WEIGHTS``: fibula x3, patella x2; ``train
--class-weights`` changes them for a run); and the generator centres a share of the crops on the fibula and the
patella (``ranges.BONE_CROP_P``, ``ranges.BONE_CROP_WEIGHTS``). The weights shift the learned prior towards the
small bones (they come out too large); ``calibrate`` fits the logit offsets that take most of that back.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

DEFAULT_CLASS_WEIGHTS = (1.0, 1.0, 1.0, 3.0, 2.0)  # background, femur, tibia, fibula, patella
DICE_SMOOTH = 1.0  # voxels; keeps the Dice of a bone absent from the whole batch finite


def soft_dice_per_class(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft Dice of each class over the whole batch, shape (C,)."""
    onehot = F.one_hot(target, probs.shape[1]).permute(0, 4, 1, 2, 3).to(probs.dtype)
    dims = (0, 2, 3, 4)
    inter = (probs * onehot).sum(dims)
    total = probs.sum(dims) + onehot.sum(dims)
    return (2 * inter + DICE_SMOOTH) / (total + DICE_SMOOTH)


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, class_weights: torch.Tensor,
                 dice_weight: float = 1.0, ce_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """(loss, parts): ``ce_weight`` x weighted CE + ``dice_weight`` x (1 - mean soft Dice of the bones)."""
    logits = logits.float()
    ce = F.cross_entropy(logits, target, weight=class_weights.to(logits.device))
    dice = soft_dice_per_class(torch.softmax(logits, dim=1), target)[1:]
    dice_loss = 1 - dice.mean()
    loss = ce_weight * ce + dice_weight * dice_loss
    return loss, {"ce": float(ce.detach()), "dice_loss": float(dice_loss.detach())}
