"""A model's plan (nnU-Net's "plans"): the network, the preprocessing and the labels, in one torch-free object.

Training makes one (``TrainConfig.plan()``), the model card stores it (``network``, ``input`` and ``labels``
of ``model.json``), and inference, evaluation and export read it back: the network is built from it by
``network.build_network`` and the image is prepared by it, so nothing is flattened into loose settings and
rebuilt elsewhere (where, for instance, a per-axis spacing could silently become an isotropic one).

    plan = ModelPlan(UNetConfig(features=(8, 16, 32, 64)), Preprocessing(spacing_mm=(1.5, 1.5, 3.0)))
    plan.card_fields()  # {"labels": {...}, "network": {...}, "input": {...}}, as in model.json
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

from ..constants import BONES
from ..limits import check_model_card
from .config import UNetConfig

DEFAULT_NORMALIZATION = {"lower_percentile": 1.0, "upper_percentile": 99.0}
MAX_LOGIT_OFFSET = 10.0  # a calibration offset beyond this would silence or flood a class: the card is broken


def per_axis_spacing(value: float | Sequence[float]) -> tuple[float, float, float]:
    """Per-axis spacing (x, y, z) from one number (isotropic) or three."""
    if isinstance(value, (int, float)):
        return (float(value),) * 3
    values = tuple(float(v) for v in value)
    if len(values) == 1:
        return values * 3
    if len(values) != 3:
        raise ValueError(f"a spacing is one number or three (x, y, z), not {list(values)}")
    return values  # type: ignore[return-value]


@dataclass(frozen=True)
class Preprocessing:
    """How an image must be prepared before the network sees it; stored in the card under ``input``.

    ``spacing_mm`` is per axis, in the grid's (x, y, z) order (SimpleITK's): a model may be planned on a grid
    that is coarser across slices than in plane. ``patch_size`` (the inference window, the trainer's validation
    samples) is in (z, y, x) order, that of the arrays the network sees — like the trainer's ``--crop``."""

    spacing_mm: tuple[float, float, float] = (1.5, 1.5, 1.5)
    patch_size: tuple[int, int, int] = (96, 96, 96)
    orientation: str = "LPS"  # the grid axes follow the patient axes (identity direction in ITK/LPS terms)
    normalization: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_NORMALIZATION))

    def __post_init__(self) -> None:  # lists (from JSON) or one number become the tuples the rest expects
        object.__setattr__(self, "spacing_mm", per_axis_spacing(self.spacing_mm))
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))

    @property
    def isotropic(self) -> bool:
        return len(set(self.spacing_mm)) == 1

    def to_dict(self) -> dict:
        return {
            "spacing_mm": list(self.spacing_mm),
            "patch_size": list(self.patch_size),
            "orientation": self.orientation,
            "normalization": dict(self.normalization),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        return cls(
            spacing_mm=tuple(float(s) for s in d["spacing_mm"]),
            patch_size=tuple(int(s) for s in d["patch_size"]),
            orientation=str(d.get("orientation", "LPS")),
            normalization={k: float(v) for k, v in d.get("normalization", {}).items()} or dict(DEFAULT_NORMALIZATION),
        )


@dataclass(frozen=True)
class ModelPlan:
    """The network (``UNetConfig``), the preprocessing and the labels of one model.

    ``labels`` left empty means the network's classes in ``BONES`` order (label value -> bone name).
    ``logit_offsets`` (one per class, background first; empty = none) are added to the network's logits before
    the softmax: a calibration fitted after training (``trainer calibrate``) that undoes the bias the training's
    class weights leave, e.g. a thin bone weighted 3x in the loss coming out too thick. Stored in the card's
    ``output`` field, which is absent when there are none."""

    network: UNetConfig = field(default_factory=UNetConfig)
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    labels: dict[int, str] = field(default_factory=dict)
    logit_offsets: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not self.labels:
            object.__setattr__(self, "labels",
                               {b.label: b.name for b in BONES[: self.network.out_channels - 1]})
        offsets = tuple(float(b) for b in self.logit_offsets)
        if offsets and (len(offsets) != self.network.out_channels
                        or not all(math.isfinite(b) and abs(b) <= MAX_LOGIT_OFFSET for b in offsets)):
            raise ValueError(f"logit offsets must be {self.network.out_channels} finite numbers within "
                             f"±{MAX_LOGIT_OFFSET:g}, not {list(self.logit_offsets)}")
        object.__setattr__(self, "logit_offsets", offsets)

    def with_offsets(self, offsets: Sequence[float]) -> "ModelPlan":
        """This plan with its output calibrated by ``offsets`` (see the class docstring)."""
        return ModelPlan(self.network, self.preprocessing, dict(self.labels), tuple(offsets))

    def with_classes(self, out_channels: int) -> "ModelPlan":
        """This plan for a network grown to ``out_channels`` classes (labels: the first bones of ``BONES``)."""
        net = UNetConfig(self.network.in_channels, out_channels, self.network.features, self.network.arch)
        return ModelPlan(net, self.preprocessing)

    def card_fields(self) -> dict:
        """The plan's part of ``model.json``: ``labels``, ``network``, ``input`` and, when calibrated, ``output``."""
        fields = {"labels": {str(k): v for k, v in sorted(self.labels.items())},
                  "network": self.network.to_dict(),
                  "input": self.preprocessing.to_dict()}
        if self.logit_offsets:
            fields["output"] = {"logit_offsets": list(self.logit_offsets)}
        return fields

    @classmethod
    def from_card_fields(cls, d: dict) -> "ModelPlan":
        """The plan stored in a card's dict; refuses sizes that would need absurd memory (``ModelError``)."""
        check_model_card(d["input"]["spacing_mm"], d["input"]["patch_size"], d["network"]["features"])
        return cls(network=UNetConfig.from_dict(d["network"]),
                   preprocessing=Preprocessing.from_dict(d["input"]),
                   labels={int(k): str(v) for k, v in d["labels"].items()},
                   logit_offsets=_offsets_field(d.get("output")))


def _offsets_field(output: object) -> tuple[float, ...]:
    """The card's ``output.logit_offsets`` (absent: none); anything but a list of numbers is a ValueError."""
    if output is None:
        return ()
    if not isinstance(output, dict) or not isinstance(output.get("logit_offsets", []), list):
        raise ValueError(f"the card's output field must hold a list of logit offsets, not {output!r:.80}")
    return tuple(float(b) for b in output.get("logit_offsets", []))
