"""Dice + cross-entropy, the loss that lets a small bone (the fibula) count as much as a large one.

Class imbalance (the 2017 thesis's multi-class net never found the fibula): the soft Dice term is averaged
with equal weight over the three bones, whatever their size, so the fibula contributes a third of it; the
cross-entropy gets per-class weights (``DEFAULT_CLASS_WEIGHTS``: fibula x3, patella x2; ``train
--class-weights`` changes them for a run); and the generator centres a share of the crops on the fibula and the
patella (``ranges.BONE_CROP_P``, ``ranges.BONE_CROP_WEIGHTS``). The weights shift the learned prior towards the
small bones (they come out too large); ``calibrate`` fits the logit offsets that take most of that back.

Targets are class indices (B, Z, Y, X) or class fractions (B, C, Z, Y, X; ``ranges.SOFT_TARGETS``). With
fractions the cross-entropy is their expected CE (a one-hot fraction gives the hard CE), and the Dice term takes
squares in its denominator (V-Net's form, 2 sum(pt) / (sum(p^2) + sum(t^2))). Why: the plain soft Dice pushes each
border voxel to 0 or 1 (its gradient favours p = 1 wherever t > Dice / 2) and, being averaged over four bones, it
outweighs the CE there, so a model would learn sharp voxels and lose the sub-voxel border the fractions carry;
the squared form is largest exactly at p = t.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

DEFAULT_CLASS_WEIGHTS = (1.0, 1.0, 1.0, 3.0, 2.0)  # background, femur, tibia, fibula, patella
DICE_SMOOTH = 1.0  # voxels; keeps the Dice of a bone absent from the whole batch finite


def as_fractions(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, C, Z, Y, X) class fractions of a target given as indices (one-hot) or already as fractions."""
    if target.is_floating_point():
        return target
    return F.one_hot(target, num_classes).permute(0, 4, 1, 2, 3).float()


def soft_dice_per_class(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft Dice of each class over the whole batch, shape (C,); squared denominator for fractions."""
    fractions = as_fractions(target, probs.shape[1]).to(probs.dtype)
    dims = (0, 2, 3, 4)
    inter = (probs * fractions).sum(dims)
    if target.is_floating_point():
        total = (probs * probs).sum(dims) + (fractions * fractions).sum(dims)
    else:
        total = probs.sum(dims) + fractions.sum(dims)
    return (2 * inter + DICE_SMOOTH) / (total + DICE_SMOOTH)


def finer_probabilities(logits: torch.Tensor, factor: int) -> torch.Tensor:
    """Softmax probabilities interpolated linearly onto ``factor`` points per voxel and axis, the points of a
    supersampled target (offsets of +-1/4 voxel for 2, as ``F.interpolate`` without aligned corners places
    them): what the pipeline does to the probabilities before its argmax on a finer acquisition grid."""
    return F.interpolate(torch.softmax(logits, dim=1), scale_factor=factor, mode="trilinear", align_corners=False)


def fine_dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, class_weights: torch.Tensor,
                      dice_weight: float = 1.0, ce_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """``dice_ce_loss`` of the probabilities interpolated onto a target ``factor`` times finer per axis
    (``ranges.FINE_TARGETS``): weighted CE and plain soft Dice of the bones, at the target's points."""
    factor = target.shape[-1] // logits.shape[-1]
    if factor < 2 or any(t != factor * n for t, n in zip(target.shape[-3:], logits.shape[-3:])):
        raise ValueError(f"a fine target {tuple(target.shape[-3:])} must be a whole multiple >= 2 of the "
                         f"logits' {tuple(logits.shape[-3:])}")
    probs = finer_probabilities(logits.float(), factor)
    ce = F.nll_loss(torch.log(probs.clamp_min(1e-6)), target, weight=class_weights.to(logits.device))
    dice_loss = 1 - soft_dice_per_class(probs, target)[1:].mean()
    loss = ce_weight * ce + dice_weight * dice_loss
    return loss, {"ce": float(ce.detach()), "dice_loss": float(dice_loss.detach())}


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, class_weights: torch.Tensor,
                 dice_weight: float = 1.0, ce_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """(loss, parts): ``ce_weight`` x weighted CE + ``dice_weight`` x (1 - mean soft Dice of the bones); a
    class-index target finer than the logits goes to ``fine_dice_ce_loss``."""
    if not target.is_floating_point() and target.shape[-3:] != logits.shape[-3:]:
        return fine_dice_ce_loss(logits, target, class_weights, dice_weight, ce_weight)
    logits = logits.float()
    weight = class_weights.to(logits.device)
    if target.is_floating_point():  # fractions: normalized like the hard case, by the weight of the truth
        weighted = target * weight.view(1, -1, 1, 1, 1)
        ce = -(torch.log_softmax(logits, dim=1) * weighted).sum() / weighted.sum()
    else:
        ce = F.cross_entropy(logits, target, weight=weight)
    dice = soft_dice_per_class(torch.softmax(logits, dim=1), target)[1:]
    dice_loss = 1 - dice.mean()
    loss = ce_weight * ce + dice_weight * dice_loss
    return loss, {"ce": float(ce.detach()), "dice_loss": float(dice_loss.detach())}
