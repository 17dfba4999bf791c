"""``export``: a run's best weights -> a new model version (library format) with its card and MODEL_CARD.md.

The card records the exact preprocessing the run trained with (spacing, window, normalization), the
network, a training summary (data, synthesis ranges, steps, time, hardware) and the evaluation metrics.
``save_model`` creates the version folder atomically and refuses to overwrite an existing version.
"""
from __future__ import annotations

import csv
import json
import os
import platform
from pathlib import Path

import torch

from KneeSegmentationLib.errors import DatasetError
from KneeSegmentationLib.files import write_text_atomically
from KneeSegmentationLib.models.card import ModelCard, Preprocessing
from KneeSegmentationLib.paths import bundled_models_root
from KneeSegmentationLib.models.store import save_model
from KneeSegmentationLib.models.network import count_parameters

from . import ranges
from .config import TrainConfig
from .dataset import read_manifest
from .runfolder import BEST, CONFIG_FILE, LAST, TRAIN_LOG, best_model, load_checkpoint

MODEL_CARD_MD = "MODEL_CARD.md"


def synthesis_ranges(overrides: dict | None = None) -> dict:
    """The ranges a run drew from: this module's, with the run's ``--synthesis`` overrides."""
    table = {k: v for k, v in vars(ranges).items() if k.isupper()}
    return {**table, **ranges.checked_overrides(overrides or {})}


def hardware() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()} CPU, {os.cpu_count()} cores visible, {gpu}; torch {torch.__version__}"


BENCHMARK_KEYS = ("benchmark", "n_cases", "bones", "dice_by_role", "dice_by_plane", "dice_by_contrast",
                  "echo_consistency", "line")


def benchmark_record(folder: Path) -> dict:
    """The figures of a benchmark's ``summary.json`` that belong in a model card (not its case plan)."""
    path = folder / "summary.json"
    if not path.is_file():
        raise DatasetError(f"{path} not found; run `python -m trainer benchmark` first")
    summary = json.loads(path.read_text(encoding="utf-8"))
    record = {k: summary[k] for k in BENCHMARK_KEYS if k in summary}
    echoes = record.get("echo_consistency")
    if isinstance(echoes, dict) and echoes.get("png"):  # a card names no machine paths
        record["echo_consistency"] = {**echoes, "png": Path(echoes["png"]).name}
    return record


def data_summary(manifest: dict) -> list[dict]:
    """The dataset in a card: each real map on its own, the shape-model draws counted per role (with seeds)."""
    out, draws = [], {}
    for m in manifest["maps"]:
        meta = m.get("meta") or {}
        if "seed" in meta:
            draws.setdefault(m["role"], []).append(int(meta["seed"]))
        else:
            out.append({k: m.get(k, "") for k in ("id", "role", "source", "source_sha256", "note")})
    for role, seeds in sorted(draws.items()):
        out.append({"id": f"llp26 x{len(seeds)}", "role": role, "source": "LLP26 shape model draws",
                    "source_sha256": "", "note": f"seeds {min(seeds)}..{max(seeds)} (refused draws skipped), "
                                                 "MPL-2.0"})
    return out


WEIGHTS = {"best": BEST, "last": LAST}  # export's choice of checkpoint


def run_summary(run: Path, cfg: TrainConfig) -> dict:
    """Training facts of a run folder: steps, time, data, settings."""
    last = load_checkpoint(run / LAST) if (run / LAST).is_file() else {}
    best = load_checkpoint(run / BEST)
    manifest = read_manifest(Path(cfg.dataset))
    rows = []
    if (run / TRAIN_LOG).is_file():
        with open(run / TRAIN_LOG, newline="") as f:
            rows = list(csv.DictReader(f))
    s_per_step = sum(float(r["s_per_step"]) for r in rows) / len(rows) if rows else None
    return {
        "steps": last.get("step", best.get("step")),
        "best_step": best.get("step"),
        "training_time_min": round(last.get("elapsed_s", 0.0) / 60, 1),
        "mean_s_per_step": round(s_per_step, 3) if s_per_step else None,
        "hardware": hardware(),
        "data": data_summary(manifest),
        "data_source": "label maps of the mskt 0.1.22 sdist (PyPI, MIT per its metadata) and knees drawn from "
                       "the LLP26 shape model (musculoskeletal-models 0.2.4 sdist, MPL-2.0); images synthesized",
        "settings": {k: v for k, v in cfg.__dict__.items() if k not in ("dataset", "run_dir", "init_model", "cases")},
        "synthesis": synthesis_ranges(cfg.synthesis),
        "class_imbalance": "soft Dice averaged equally over the bones + CE weighted (bg, femur, tibia, "
                           f"fibula, patella) = {list(cfg.class_weights)}; {ranges.BONE_CROP_P:.0%} of the crops "
                           "centred on a point of a random bone (shafts, fibula and patella included)",
        "best_validation": {k: v for k, v in best.get("validation", {}).items() if k != "cases"},
    }


def export(run: Path, root: Path | None = None, name: str = "knee-bones", version: int | None = None,
           eval_dir: Path | None = None, description: str = "", parent: str | None = None,
           notes: str = "", benchmark_dir: Path | None = None, calibration: Path | None = None,
           weights: str = "best") -> Path:
    """Writes the best weights of ``run`` as ``root/name/vN`` and returns the folder; ``benchmark_dir``
    (a ``python -m trainer benchmark`` output of these weights) records the benchmark in the card,
    ``calibration`` (a ``calibrate`` record of these weights) sets the card's logit offsets.

    ``weights="last"`` writes the last step's weights instead: when the validation score is flat within its
    noise, its best step is a draw among equals, while the last step has the fully decayed learning rate; the
    benchmark, not the validation, then decides between the two exports."""
    run = Path(run)
    if weights not in WEIGHTS:
        raise DatasetError(f"weights must be one of {', '.join(WEIGHTS)}, not {weights!r}")
    best = best_model(run, WEIGHTS[weights])  # the network of the run's plan, holding those weights
    cfg, net = TrainConfig.load(run / CONFIG_FILE), best.network
    metrics = {}
    if eval_dir is not None:
        path = Path(eval_dir) / "metrics.json"
        if not path.is_file():
            raise DatasetError(f"{path} not found; run `python -m trainer evaluate` first")
        metrics = json.loads(path.read_text(encoding="utf-8"))
    if benchmark_dir is not None:
        metrics["benchmark"] = benchmark_record(Path(benchmark_dir))
    plan = best.card.plan
    if calibration is not None:
        from .calibrate import load_calibration

        record = load_calibration(Path(calibration))
        try:
            plan = plan.with_offsets(record["logit_offsets"])
        except (TypeError, ValueError) as e:
            raise DatasetError(f"{calibration}: {e}") from e
        metrics["calibration"] = {k: record[k] for k in ("model", "tag", "logit_offsets", "dice_before",
                                                          "dice_after", "cases") if k in record}
    training = run_summary(run, cfg)
    training["exported"] = {"weights": weights, "step": training["best_step" if weights == "best" else "steps"]}
    training["parameters"] = count_parameters(net)
    card = ModelCard(
        name=name, version=0, plan=plan, parent=parent,
        description=description or "Femur, Tibia, Fibula and Patella in knee MRI of any contrast and orientation; "
                                   "3D U-Net trained on images synthesized from real label maps.",
        training=training, metrics=metrics)
    out = save_model(net.eval(), card, root if root is not None else bundled_models_root(), version)
    write_model_card_md(out, card, notes)
    return out


def _grid(pre: Preprocessing) -> str:
    """``"isotropic 1.5 mm grid"``, or ``"1.5 x 1.5 x 3.0 mm (x, y, z) grid"`` for a per-axis spacing."""
    if pre.isotropic:
        return f"isotropic {pre.spacing_mm[0]} mm grid"
    return f"{' x '.join(str(s) for s in pre.spacing_mm)} mm (x, y, z) grid"


def _exported(training: dict) -> str:
    """``"; weights of the last step, 5016"`` when the card holds weights other than the best step's."""
    exported = training.get("exported") or {}
    if exported.get("weights", "best") == "best":
        return ""
    return f"; weights of the {exported['weights']} step, {exported.get('step')}"


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def write_model_card_md(folder: Path, card: ModelCard, notes: str = "") -> Path:
    """A human-readable card next to ``model.json`` (generated from the same facts)."""
    t, m = card.training, card.metrics
    lines = [f"# {card.name} v{card.version}", "", card.description, "",
             f"- Network: {card.network.arch}, features {list(card.network.features)}, "
             f"{t.get('parameters', '?')} parameters",
             f"- Input: {_grid(card.preprocessing)} along the patient (LPS) axes, "
             f"window {list(card.preprocessing.patch_size)} voxels, normalization {card.preprocessing.normalization}",
             f"- Training: {t.get('steps')} steps (best at {t.get('best_step')}{_exported(t)}), "
             f"{t.get('training_time_min')} min, "
             f"{t.get('mean_s_per_step')} s/step on {t.get('hardware')}",
             f"- Data: {t.get('data_source')}", ""]
    if card.plan.logit_offsets:
        lines[-1:-1] = [f"- Output calibration: logit offsets {list(card.plan.logit_offsets)} (background first), "
                        "fitted on validation anatomy by `python -m trainer calibrate`"]
    for d in t.get("data", []):
        lines.append(f"  - `{d['id']}` ({d['role']}): {d['source']} — {d['note']}")
    lines += ["", f"- Class imbalance: {t.get('class_imbalance')}", ""]
    if m:
        lines += ["## Validation", ""]
        for section, rows in m.items():
            if isinstance(rows, dict):
                lines.append(f"**{section}**")
                lines.append("")
                for k, v in rows.items():
                    lines.append(f"- {k}: {json.dumps(v) if isinstance(v, (dict, list)) else _fmt(v)}")
                lines.append("")
    if notes:
        lines += [notes, ""]
    return write_text_atomically(Path(folder) / MODEL_CARD_MD, "\n".join(lines) + "\n")
