"""What the panel's one model picker shows about each installed model version, in one record.

The picker needs the card (label, metrics, description, plain summary), the registry (which version is the
default) and the user models root (how a retrained version did on the user's cases, ``user_metrics.json``).
``model_choices`` reads all three once, so the panel never joins records from different places and both scene
logics (``SegmentationLogic``, ``TrainingLogic``) answer with the same thing. Cards and JSON only: no torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ..errors import ModelError
from ..learn.compare import read_user_metrics
from ..models.card import format_metrics, plain_summary
from ..models.registry import default_model, list_models


@dataclass(frozen=True)
class ModelChoice:
    """A model version as the picker shows it."""

    label: str  # "<name> v<version>"
    path: Path
    is_default: bool  # the version used when the panel's model is "default" (registry.default_model)
    parent: str | None  # the tag it was fine-tuned from; None for a bundled model
    metrics: str  # card.format_metrics: the validation figures in one line
    description: str
    summary: str  # card.plain_summary: bones, training data, held-out Dice in plain words
    user_metrics: dict | None = None  # Dice on the user's cases beside the parent's (retrained versions only)

    @property
    def user_summary(self) -> str:
        """Where the version comes from, or for a retrained one how it did on the user's cases."""
        if not self.user_metrics:
            return "bundled" if not self.parent else f"from {self.parent}"
        m, p = self.user_metrics["metrics"], self.user_metrics["parent_metrics"]
        kind = "held-out" if self.user_metrics.get("held_out") else "seen"
        return f"Dice on your {kind} cases {m['score']:.3f} (was {p['score']:.3f} with {self.user_metrics['parent']})"


def model_choices(roots: Iterable[Path] | None = None, user_root: Path | None = None) -> list[ModelChoice]:
    """Every installed version under ``roots`` (registry defaults when None), sorted by name and version, with
    the default marked and the user metrics recorded in ``user_root`` (default: the user models root)."""
    roots = list(roots) if roots is not None else None
    entries = list_models(roots)
    try:
        default = default_model(roots).path.resolve()
    except ModelError:  # nothing installed
        default = None
    user = read_user_metrics(user_root)
    return [ModelChoice(f"{e.name} v{e.version}", e.path, e.path.resolve() == default, e.card.parent,
                        format_metrics(e.card.metrics), e.card.description, plain_summary(e.card),
                        user.get(str(e.path.resolve()))) for e in entries]
