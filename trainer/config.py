"""The settings of a training run, one dataclass saved as ``config.json`` in the run folder (resume reads it).

The fields are the command line's; the model they describe is ``plan()`` (a ``ModelPlan``: network,
preprocessing, labels), which is what training, export and evaluation use. A run continuing a model takes that
model's plan (``take_plan``) instead of its own network and preprocessing options.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from KneeSegmentationLib.constants import NUM_CLASSES
from KneeSegmentationLib.limits import check_model_card
from KneeSegmentationLib.models.config import UNetConfig
from KneeSegmentationLib.models.plan import ModelPlan, Preprocessing, per_axis_spacing

from .losses import DEFAULT_CLASS_WEIGHTS


@dataclass
class TrainConfig:
    dataset: str = ""
    run_dir: str = ""
    features: tuple[int, ...] = (8, 16, 32, 64)
    spacing_mm: tuple[float, float, float] = (1.5, 1.5, 1.5)  # model grid (x, y, z; inference spacing)
    patch: tuple[int, int, int] = (96, 96, 96)  # inference window; validation cases use it too
    crop: tuple[int, int, int] = (64, 64, 64)  # training sample size
    batch: int = 2
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup: int = 100
    steps: int = 3000
    min_lr_fraction: float = 0.02
    class_weights: tuple[float, ...] = DEFAULT_CLASS_WEIGHTS
    synthesis: dict = field(default_factory=dict)  # overrides of trainer/ranges.py for this run (NAME: value)
    val_every: int = 200
    val_cases: int = 6  # held-out (val-role) maps for Femur/Tibia; a third of them on the fibula map
    patience: int = 8  # validations without improvement before early stopping
    checkpoint_every: int = 50
    log_every: int = 10
    seed: int = 0
    val_seed: int = 20261123  # fixed contrasts of the validation cases, never drawn in training
    max_minutes: float = 0.0  # 0 = no time limit; otherwise stop (and save) after this many minutes
    # Time budget: when > 0, the total number of steps is re-estimated (after ``CALIBRATION_STEPS`` and at
    # every validation) from the measured seconds per step, so that the cosine decay ends when the budget
    # does, whatever the machine's load. The schedule then depends on timing: not bit-reproducible.
    budget_minutes: float = 0.0
    threads: int = 0  # torch CPU threads (0 = torch default)
    workers: int = 1  # background processes rendering the next batches (0 = render in the training process)
    amp: bool = True  # mixed precision on CUDA
    normalization: dict = field(default_factory=lambda: {"lower_percentile": 1.0, "upper_percentile": 99.0})
    # fine-tuning
    init_model: str = ""  # model version folder to start from
    cases: str = ""  # folder of corrected cases
    case_fraction: float = 0.5  # share of each batch taken from corrected cases

    def __post_init__(self) -> None:
        # JSON gives lists; a run folder written before per-axis spacings holds one number (isotropic).
        self.spacing_mm = per_axis_spacing(self.spacing_mm)
        self.features = tuple(int(f) for f in self.features)
        self.patch = tuple(int(p) for p in self.patch)
        self.crop = tuple(int(c) for c in self.crop)
        self.class_weights = tuple(float(w) for w in self.class_weights)

    def plan(self) -> ModelPlan:
        """The model this run trains: every class (the synthetic images label every bone), on ``LPS`` axes."""
        return ModelPlan(UNetConfig(in_channels=1, out_channels=NUM_CLASSES, features=self.features),
                         Preprocessing(self.spacing_mm, self.patch, "LPS", dict(self.normalization)))

    def take_plan(self, plan: ModelPlan) -> None:
        """Continues a model: its network widths and preprocessing replace this run's options (its classes may
        grow to every bone, see ``plan()``)."""
        pre = plan.preprocessing
        if pre.orientation != "LPS":
            raise ValueError(f"cannot train on a {pre.orientation!r} grid (the trainer renders LPS grids)")
        self.features, self.spacing_mm, self.patch = tuple(plan.network.features), pre.spacing_mm, pre.patch_size
        self.normalization = dict(pre.normalization)

    def regrid(self, spacing_mm) -> None:
        """Moves the run to another model grid (``train --init-model M --regrid 1.3``): the network is fully
        convolutional, so a model's weights run on any grid, but they learnt anatomy at their own voxel size and
        must be trained on the new one. The inference window grows or shrinks to span the same field of view
        (rounded up to whole network blocks), so an image is run in as many passes as before."""
        new = per_axis_spacing(spacing_mm)
        if not all(0.3 <= s <= 5.0 for s in new):
            raise ValueError(f"--regrid {spacing_mm}: a model grid of 0.3-5 mm is expected")
        divisor = self.plan().network.size_divisor
        patch = tuple(int(math.ceil(p * old / s / divisor) * divisor)
                      for p, old, s in zip(self.patch, self.spacing_mm[::-1], new[::-1]))
        check_model_card(new, patch, self.features, where=f"--regrid {spacing_mm}")  # before training, not at export
        self.patch, self.spacing_mm = patch, new

    def save(self, path: Path) -> None:
        tmp = Path(path).with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> "TrainConfig":
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
