"""Where and how long a run trains: torchrun's processes, the learning-rate schedule and the time budget.

Under ``torchrun`` the model is wrapped in DistributedDataParallel (NCCL on GPU, gloo on CPU); each rank draws
its own samples, rank 0 validates, logs and saves. The learning rate warms up linearly, then decays along a
cosine to a floor at ``cfg.steps``; with ``--budget-minutes`` that step count is re-estimated from the
measured time per step (after ``CALIBRATION_STEPS`` and at each validation), so the schedule ends with the
budget.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from KneeSegmentationLib.learn.contract import CONFIG_FILE

from .config import TrainConfig

CALIBRATION_STEPS = 30
VALIDATION_SHARE = 0.93  # fraction of the remaining budget assumed spent on training steps (rest: validation)


# ------------------------------------------------------------------------------------------ distributed
@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> Dist:
    """Reads torchrun's environment; a single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world <= 1:
        return Dist(0, 1, torch.device("cuda" if cuda else "cpu"))
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    return Dist(rank, world, device)


# ------------------------------------------------------------------------------------------- schedule
def lr_factor(step: int, warmup: int, total: int, floor: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``floor`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))


# ------------------------------------------------------------------------------------------- budget
def fit_budget(cfg: TrainConfig, d: Dist, step: int, elapsed_s: float, recent: list[float], run: Path) -> None:
    """Sets ``cfg.steps`` so the run ends with the time budget (validation time included in the estimate)."""
    per_step = torch.tensor([elapsed_s / max(step, 1) if not recent else
                             max(float(np.mean(recent)), elapsed_s / max(step, 1) * 0.5)])
    if d.world > 1:
        dist.broadcast(per_step, 0)
    remaining = cfg.budget_minutes * 60 - elapsed_s
    cfg.steps = max(step + 1, step + int(remaining / float(per_step) * VALIDATION_SHARE))
    recent.clear()
    if d.main:
        cfg.save(run / CONFIG_FILE)
