"""The model card: a model version's JSON metadata (``model.json``), read and checked without torch.

Layout of a version folder: ``<models root>/<name>/v<N>/`` holding ``model.safetensors`` and ``model.json``.
The card records the model's plan (``plan.ModelPlan``: labels, the exact preprocessing — per-axis spacing, patch
size, normalization — and the network hyper-parameters), the SHA-256 of the weights, training summary and validation metrics. Reading it, checking
the weights' checksum and describing the model (``format_metrics``, ``plain_summary``) need no torch, so
``kneeseg models``/``info``/``select`` start fast; ``models.store`` loads and saves the weights themselves.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..constants import BONES, SUPPORTED_CLASS_COUNTS
from ..errors import ModelError
from ..files import read_json_object, sha256_of
from ..names import check_name, check_version, printable
from .config import UNetConfig
from .plan import ModelPlan, Preprocessing  # noqa: F401 (Preprocessing: the card's ``input``, imported from here)

FORMAT = "kneeseg-model/1"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "model.json"
VERSION_DIR = re.compile(r"^v(\d+)$")
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin")
# First bytes of a pickle (protocol 2+) and of a zip archive (torch.save's default container).
PICKLE_MAGICS = (b"\x80", b"PK\x03\x04")


@dataclass
class ModelCard:
    """Everything about a model except its weights; what the model *is* (network, preprocessing, labels) is its
    ``plan``, stored in the card's ``network``, ``input`` and ``labels`` fields."""

    name: str
    version: int
    plan: ModelPlan
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    parent: str | None = None  # "name/vN" this model was fine-tuned from
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    weights_sha256: str = ""

    @property
    def network(self) -> UNetConfig:
        return self.plan.network

    @property
    def preprocessing(self) -> Preprocessing:
        return self.plan.preprocessing

    @property
    def labels(self) -> dict[int, str]:
        return self.plan.labels

    @property
    def mirror_trained(self) -> bool:
        """Whether training saw left-right mirrored knees (its record's ``synthesis.FLIP_LR_P`` > 0): only then
        is a left knee's prediction mirrored a right knee's, and averaging the two (the pipeline's mirrored
        pass, its default for such models) valid. A card without that record says no."""
        synthesis = self.training.get("synthesis") if isinstance(self.training, dict) else None
        try:
            return float((synthesis or {}).get("FLIP_LR_P", 0.0)) > 0.0
        except (TypeError, ValueError):
            return False

    @property
    def tag(self) -> str:
        return f"{self.name}/v{self.version}"

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "name": self.name,
            "version": self.version,
            "created": self.created,
            "description": self.description,
            "parent": self.parent,
            **self.plan.card_fields(),  # "labels", "network", "input"[, "output"]
            "weights": {"file": WEIGHTS_FILE, "sha256": self.weights_sha256},
            "training": self.training,
            "metrics": self.metrics,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "ModelCard":
        if d.get("format") != FORMAT:
            raise ModelError(f"not a KneeSegmentation model card (format {d.get('format')!r}, expected {FORMAT!r})")
        try:
            check_name(d["name"], "model name")
            check_version(d["version"])
            return cls(
                name=str(d["name"]),
                version=int(d["version"]),
                plan=ModelPlan.from_card_fields(d),
                created=str(d.get("created", "")),
                parent=d.get("parent"),
                training=dict(d.get("training", {})),
                metrics=dict(d.get("metrics", {})),
                description=str(d.get("description", "")),
                weights_sha256=str(d["weights"]["sha256"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ModelError(f"model card is malformed: {printable(repr(e))}") from e



def refuse_pickles(path: Path) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ModelError(f"{path.name}: pickled model files are refused (they can execute code); "
                         "use a KneeSegmentation model folder with model.safetensors and model.json")
    with open(path, "rb") as f:
        head = f.read(4)
    if any(head.startswith(m) for m in PICKLE_MAGICS):
        raise ModelError(f"{path.name}: this is a pickle or torch.save archive, not safetensors; refused "
                         "because loading it could execute code")


def check_labels(card: ModelCard, path: Path) -> None:
    """A model's classes must be the first bones of ``BONES`` in label order (3 bones for models made before
    the Patella class, 4 since), so a label value means the same bone in every model."""
    n = card.network.out_channels
    expected = {b.label: b.name for b in BONES[: n - 1]}
    if n not in SUPPORTED_CLASS_COUNTS or card.labels != expected:
        names = "/".join(b.name for b in BONES)
        raise ModelError(f"{path}: the model's labels {card.labels} do not match {names} "
                         f"(a model segments the first 3 or all {len(BONES)} of them)")


def read_card(model_dir: Path | str) -> ModelCard:
    """Reads and validates ``model.json`` of a version folder (does not touch the weights)."""
    model_dir = Path(model_dir)
    if not (model_dir / CARD_FILE).is_file():
        raise ModelError(f"{model_dir}: no {CARD_FILE} (not a KneeSegmentation model folder)")
    return ModelCard.from_dict(read_json_object(model_dir / CARD_FILE, ModelError, "the model card"))



def verify_weights(model_dir: Path | str) -> ModelCard:
    """The card of ``model_dir`` once its weights' checksum and labels are checked (without loading torch
    tensors): what ``select`` needs before it makes a version the default."""
    model_dir = Path(model_dir)
    card = read_card(model_dir)
    weights = model_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelError(f"{model_dir}: {WEIGHTS_FILE} is missing")
    refuse_pickles(weights)
    digest = sha256_of(weights)
    if digest != card.weights_sha256:
        raise ModelError(f"{weights}: checksum mismatch (file {digest[:12]}…, card {card.weights_sha256[:12]}…); "
                         "the file is damaged or was modified")
    check_labels(card, model_dir)
    return card


def versions_in(name_dir: Path) -> list[int]:
    if not name_dir.is_dir():
        return []
    return sorted(int(m.group(1)) for p in name_dir.iterdir() if (m := VERSION_DIR.match(p.name)) and p.is_dir())



def format_metrics(metrics: dict, limit: int = 8) -> str:
    """A model's validation metrics in one line for the picker.

    The fixed benchmark (``{"benchmark": {"bones": {bone: {"dice_mean": …}}}}``) comes first: ``"benchmark (21
    held-out cases) Dice Femur 0.930, …"``. The trainer's evaluation (``{"rendered": {map: {bone: {"dice": …, "hd95_mm": …}}}}``) gives the mean Dice per
    evaluated label map and bone, the figure a user compares versions by: ``"Dice t2_left: Femur 0.908, Tibia
    0.910; …"``. Other layouts are flattened, numbers only: ``{"dice": {"Femur": 0.95}, "hd95_mm": 2.1}`` →
    ``"dice Femur 0.950, hd95_mm 2.10"``.
    """
    bench = (metrics or {}).get("benchmark")
    if isinstance(bench, dict) and isinstance(bench.get("bones"), dict) and bench["bones"]:
        return f"benchmark ({bench.get('n_cases', '?')} held-out cases) Dice " + ", ".join(
            f"{bone} {b['dice_mean']:.3f}" for bone, b in bench["bones"].items()
            if isinstance(b, dict) and isinstance(b.get("dice_mean"), (int, float)))
    rendered = (metrics or {}).get("rendered")
    if isinstance(rendered, dict) and rendered:
        per_map = [f"{name}: " + ", ".join(f"{bone} {m['dice']:.3f}" for bone, m in bones.items()
                                           if isinstance(m, dict) and "dice" in m)
                   for name, bones in rendered.items() if isinstance(bones, dict)]
        if per_map:
            return "Dice " + "; ".join(per_map)
    items: list[str] = []

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix} {k}".strip(), v)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            items.append(f"{prefix} {value:.3f}" if abs(value) < 10 else f"{prefix} {value:.1f}")

    walk("", metrics or {})
    return ", ".join(items[:limit]) + (", …" if len(items) > limit else "") if items else "no validation metrics"


_SEED_RANGE = re.compile(r"seeds (\d+)\.\.(\d+)")
_DRAW_SEED = re.compile(r"_(\d+)$")


def _training_maps(card: ModelCard) -> tuple[set[str], list[tuple[int, int]]]:
    """Map ids the card names as training data, and the seed ranges of its training shape-model draws."""
    ids, seeds = set(), []
    for d in card.training.get("data") or []:
        if not isinstance(d, dict) or d.get("role") != "train":
            continue
        ids.add(str(d.get("id", "")))
        if m := _SEED_RANGE.search(str(d.get("note", ""))):
            seeds.append((int(m.group(1)), int(m.group(2))))
    return ids, seeds


def held_out_dice(card: ModelCard) -> float | None:
    """Mean Dice over the bones of the evaluated label maps that were not trained on (None: none recorded).

    The trainer's evaluation also renders a training map (the one with a fibula, under new contrasts and
    deformations); its figures are left out here, since they are not measured on unseen anatomy. The fixed
    benchmark (held-out maps only) takes precedence where the card records it."""
    bench = (card.metrics or {}).get("benchmark")
    if isinstance(bench, dict) and isinstance(bench.get("bones"), dict):
        values = [float(b["dice_mean"]) for b in bench["bones"].values()
                  if isinstance(b, dict) and isinstance(b.get("dice_mean"), (int, float))]
        if values:
            return sum(values) / len(values)
    rendered = (card.metrics or {}).get("rendered")
    if not isinstance(rendered, dict):
        return None
    train_ids, train_seeds = _training_maps(card)
    values = []
    for map_id, bones in rendered.items():
        seed = _DRAW_SEED.search(map_id)
        trained = map_id in train_ids or (seed and any(a <= int(seed.group(1)) <= b for a, b in train_seeds))
        if not trained and isinstance(bones, dict):
            values += [float(m["dice"]) for m in bones.values() if isinstance(m, dict) and "dice" in m]
    return sum(values) / len(values) if values else None


def plain_summary(card: ModelCard) -> str:
    """The model in one line a radiologist reads at a glance, without dataset ids or file paths:
    ``"Knee bones v2 — Femur, Tibia, Fibula; trained on synthetic MRI from real knee anatomy; held-out Dice 0.91"``.
    """
    name = card.name.replace("-", " ").replace("_", " ").strip().capitalize()
    parts = [f"{name} v{card.version} — " + ", ".join(card.labels[k] for k in sorted(card.labels))]
    source = str(card.training.get("data_source", ""))
    if "synthesi" in source:
        parts.append("trained on synthetic MRI from real knee anatomy")
    if card.parent:
        parent_name, _, parent_version = card.parent.partition("/")
        parts.append(f"fine-tuned from {parent_name.replace('-', ' ')} {parent_version} on corrected cases")
    dice = held_out_dice(card)
    parts.append(f"held-out Dice {dice:.2f}" if dice is not None else "no held-out validation recorded")
    return "; ".join(parts)
