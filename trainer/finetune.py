"""``finetune``: continue an existing model on corrected cases, mixed with synthetic images, as a NEW version.

The starting model's card fixes the network and the preprocessing (spacing, window, normalization), so the
fine-tuned model runs exactly like its parent. Each batch draws ``case_fraction`` of its samples from the
corrected cases and the rest from the generator, so the model does not forget the contrasts and
orientations it was not corrected on. The result is saved next to the parent's family (default: the user
models folder) under the next free version number; the parent is never touched. The new version's folder and
tag are recorded in the run folder's ``result.json`` (``KneeSegmentationLib/learn/contract.py``), which
retraining reads.
"""
from __future__ import annotations

from pathlib import Path

from KneeSegmentationLib.models.card import read_card
from KneeSegmentationLib.models.registry import next_version
from KneeSegmentationLib.paths import bundled_models_root, user_models_root
from KneeSegmentationLib.models.store import load_model
from KneeSegmentationLib.learn.contract import write_result

from .cases import load_cases
from .config import TrainConfig
from .export import export
from .train import train


def parent_training_crop(model_dir: Path) -> tuple[int, int, int]:
    """The crop the parent was trained with (its card's training settings), else the trainer's default.

    The network normalizes each feature map over the crop (InstanceNorm), so a smaller crop than the parent's
    shifts every layer's statistics: on knee-bones v3, 120 steps at 48^3 instead of its 80^3 lowered the
    Dice of the very contrast being corrected (0.892 -> 0.881), at 80^3 it rose (0.892 -> 0.911)."""
    training = read_card(model_dir).training
    try:
        crop = tuple(int(c) for c in training["settings"]["crop"])
    except (KeyError, TypeError, ValueError):  # no record (a card written by hand): the trainer's default
        return TrainConfig().crop
    return crop if len(crop) == 3 and min(crop) > 0 else TrainConfig().crop


def finetune(model_dir: Path, cases_dir: Path, cfg: TrainConfig, root: Path | None = None,
             resume: bool = True, log=print) -> Path:
    parent = load_model(model_dir)  # checks the parent before any work
    load_cases(cases_dir)  # fails early on a malformed case
    cfg.init_model, cfg.cases = str(model_dir), str(cases_dir)
    cfg.take_plan(parent.card.plan)  # network and preprocessing are the parent's
    summary = train(cfg, resume=resume, log=log)
    log(f"fine-tuning finished: {summary}")
    root = Path(root) if root is not None else user_models_root()
    # Number across the bundled root, the target root and the parent's root, so that a fine-tuned model never
    # shares its tag (name/vN) with a bundled one (the user root starts empty).
    version = next_version(parent.card.name, [bundled_models_root(), root, Path(model_dir).resolve().parents[1]])
    out = export(Path(cfg.run_dir), root, parent.card.name, version=version,
                 description=f"{parent.card.tag} fine-tuned on {len(load_cases(cases_dir))} corrected case(s) "
                             f"from {Path(cases_dir).name}, mixed with synthetic images",
                 parent=parent.card.tag)
    write_result(Path(cfg.run_dir), out, f"{parent.card.name}/v{version}", summary["steps"], parent=parent.card.tag,
                 **{k: v for k, v in summary.items() if k != "steps"})
    return out
