"""``python -m trainer`` / ``kneeseg-train``: prepare, preview, train, finetune, evaluate, calibrate, export.

Typical session::

    python -m trainer prepare --out runs/dataset                 # fetch mskt 0.1.22, build the dataset
    python -m trainer preview --dataset runs/dataset --out preview.png
    python -m trainer train --dataset runs/dataset --run-dir runs/v1  # resumes if runs/v1/last.pt exists
    python -m trainer evaluate --run-dir runs/v1 --out runs/v1/eval
    python -m trainer ceiling --dataset runs/dataset --spacing 1.3  # what a perfect network on that grid scores
    python -m trainer calibrate --model CANDIDATE --dataset runs/dataset --out runs/v1/cal  # logit offsets
    python -m trainer export --run-dir runs/v1 --eval runs/v1/eval --calibration runs/v1/cal --version 1
    python -m trainer finetune --model Resources/Models/knee-bones/v4 --cases my_cases --dataset runs/dataset \\
        --run-dir runs/ft1                                           # writes a NEW version to the user models
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from KneeSegmentationLib.errors import InputError, KneeSegError
from KneeSegmentationLib.models.plan import per_axis_spacing
from KneeSegmentationLib.learn.contract import CONFIG_FILE, LAST

from .config import TrainConfig


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(t) for t in text.split(","))


def _class_weights(text: str) -> tuple[float, ...]:
    """Cross-entropy weights, one per class (background, femur, tibia, fibula, patella), each > 0."""
    from KneeSegmentationLib.constants import NUM_CLASSES

    try:
        weights = tuple(float(t) for t in text.split(","))
    except ValueError:
        weights = ()
    if len(weights) != NUM_CLASSES or not all(w > 0 for w in weights):
        raise argparse.ArgumentTypeError(
            f"{text!r}: give {NUM_CLASSES} positive weights (background,femur,tibia,fibula,patella), e.g. 1,1,1,3,2")
    return weights


def _synthesis_setting(text: str) -> tuple[str, object]:
    """NAME=VALUE for one range of ``trainer/ranges.py``; VALUE is JSON (0.1, [1.5, 5.0]), checked there."""
    from . import ranges

    name, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r}: give NAME=VALUE, e.g. FAT_SUPPRESSED_P=0")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        raise argparse.ArgumentTypeError(f"{text!r}: VALUE must be a number or a list, e.g. 0.1 or [1.5,5]") from None
    try:
        return next(iter(ranges.checked_overrides({name.strip(): parsed}).items()))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _spacing(text: str) -> tuple[float, float, float]:
    """``1.5`` (isotropic) or ``1.5,1.5,3`` (x, y, z), in mm."""
    try:
        return per_axis_spacing(tuple(float(t) for t in text.split(",")))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give one spacing or three (x,y,z), e.g. 1.5 or 1.5,1.5,3") from None


# The scalar options of `train` and `finetune`: flag, type, help; each defaults to the TrainConfig field of
# the flag's name (--val-every -> val_every).
_SCALAR_OPTIONS = (
    ("--batch", int, "samples per step"),
    ("--lr", float, "peak learning rate (AdamW)"),
    ("--steps", int, "training steps"),
    ("--warmup", int, "linear warm-up steps before the cosine decay"),
    ("--val-every", int, "validate every N steps"),
    ("--val-cases", int, "validation images per check"),
    ("--patience", int, "stop after N validations without improvement"),
    ("--checkpoint-every", int, "write RUN/last.pt every N steps"),
    ("--log-every", int, "log every N steps"),
    ("--seed", int, "random seed (synthesis, initialization)"),
    ("--max-minutes", float, "stop cleanly after this long"),
    ("--budget-minutes", float, "fit the number of steps (and the LR decay) to this wall-clock budget"),
    ("--threads", int, "torch CPU threads (0: default)"),
    ("--workers", int, "background processes rendering the next batches (0: in the training process)"),
)


def _add_train_options(p: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    p.add_argument("--dataset", required=True, type=Path, help="folder written by `prepare`")
    p.add_argument("--run-dir", dest="run", required=True, type=Path,
                   help="run folder (checkpoints, logs); resumes if present")
    p.add_argument("--features", type=_ints, default=d.features, help="U-Net widths, e.g. 8,16,32,64")
    p.add_argument("--spacing", type=_spacing, default=d.spacing_mm,
                   help="model grid spacing (mm): one number, or three (x,y,z) e.g. 1.5,1.5,3")
    p.add_argument("--patch", type=_ints, default=d.patch, help="inference window (voxels), e.g. 96,96,96")
    p.add_argument("--crop", type=_ints, default=d.crop, help="training sample size (voxels)")
    p.add_argument("--class-weights", type=_class_weights, default=d.class_weights,
                   help="cross-entropy weight per class: background,femur,tibia,fibula,patella")
    for flag, kind, text in _SCALAR_OPTIONS:
        p.add_argument(flag, type=kind, default=getattr(d, flag[2:].replace("-", "_")), help=text)
    p.add_argument("--synthesis", type=_synthesis_setting, action="append", default=[], metavar="NAME=VALUE",
                   help="override one range of trainer/ranges.py for this run (repeatable), e.g. FAT_SUPPRESSED_P=0")
    p.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    p.add_argument("--fresh", action="store_true", help="do not resume from RUN/last.pt")


def _config(a: argparse.Namespace, **extra) -> TrainConfig:
    return TrainConfig(
        dataset=str(a.dataset), run_dir=str(a.run), features=tuple(a.features), spacing_mm=a.spacing,
        patch=tuple(a.patch), crop=tuple(a.crop), batch=a.batch, lr=a.lr, steps=a.steps, warmup=a.warmup,
        val_every=a.val_every, val_cases=a.val_cases, patience=a.patience, checkpoint_every=a.checkpoint_every,
        log_every=a.log_every, seed=a.seed, max_minutes=a.max_minutes, budget_minutes=a.budget_minutes,
        threads=a.threads, workers=a.workers, amp=not a.no_amp, class_weights=tuple(a.class_weights),
        synthesis=dict(a.synthesis), **extra)


def cmd_prepare(a: argparse.Namespace) -> None:
    import dataclasses
    import shutil
    import tempfile

    from . import shapemodel as S
    from .dataset import mskt_sources, prepare

    if a.data is None:
        from .mskt import fetch_mskt

        a.data = fetch_mskt(a.cache)
    sources = mskt_sources(a.data)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    drawn = Path(tempfile.mkdtemp(prefix=f".{a.out.name}-llp26-", dir=a.out.parent))
    try:
        quiet = (lambda *_: None) if a.quiet_draws else print
        for role, count, first in (("train", a.shape_train, S.TRAIN_FIRST_SEED), ("val", a.shape_val, S.VAL_FIRST_SEED),
                                   ("test", a.shape_test, S.TEST_FIRST_SEED)):
            if count:
                for src in S.write_shape_maps(drawn / role, count, first, role=role, spacing=a.shape_spacing,
                                              log=quiet):
                    sources.append(dataclasses.replace(src, spacing_mm=a.shape_spacing))
        out = prepare(sources, a.out)
    finally:
        shutil.rmtree(drawn, ignore_errors=True)
    print(f"dataset written to {out}")


def cmd_preview(a: argparse.Namespace) -> None:
    import torch

    from .dataset import load_dataset
    from .generator import Generator
    from .preview import draw_samples, measure_speed

    if a.threads:
        torch.set_num_threads(a.threads)
    maps = load_dataset(a.dataset, ("train",))
    generator = Generator(maps, a.spacing, a.crop)
    samples, speed = measure_speed(generator, a.n, a.seed)
    print(f"generator: {speed:.2f} samples/s ({'x'.join(map(str, a.crop))} at {'x'.join(map(str, a.spacing))} mm, "
          f"torch threads {torch.get_num_threads()})")
    print(f"preview written to {draw_samples(samples, a.out, f'{a.n} samples, seed {a.seed}')}")


def cmd_train(a: argparse.Namespace) -> None:
    from .train import train

    cfg = _config(a)
    if a.regrid and not a.init_model:
        raise InputError("--regrid moves a trained model to another grid: give it --init-model (a new network "
                         "takes --spacing)")
    if a.widen and not a.init_model:
        raise InputError("--widen widens a trained model: give it --init-model (a new network takes --features)")
    if a.init_model:
        from KneeSegmentationLib.models.card import read_card

        cfg.init_model = str(a.init_model)
        cfg.take_plan(read_card(a.init_model).plan)  # the model's network and preprocessing; classes may grow
        if a.widen:
            cfg.features = tuple(a.widen)  # starting_network widens the model's weights to these stages
        if a.regrid:
            cfg.regrid(a.regrid)  # the model's weights, trained on another grid from here on
    if not a.fresh and (a.run / CONFIG_FILE).is_file() and (a.run / LAST).is_file():
        cfg = TrainConfig.load(a.run / CONFIG_FILE)
        cfg.max_minutes, cfg.steps = a.max_minutes or cfg.max_minutes, max(cfg.steps, a.steps)
    train(cfg, resume=not a.fresh)


def cmd_finetune(a: argparse.Namespace) -> None:
    from KneeSegmentationLib.learn.children import watch_parent

    from .finetune import finetune, parent_training_crop

    watch_parent()  # started by ``kneeseg retrain`` / the module: stop, writing nothing, if it dies

    if a.crop is None:
        a.crop = parent_training_crop(a.model)
    out = finetune(a.model, a.cases, _config(a, init_model=str(a.model), cases=str(a.cases),
                                            case_fraction=a.case_fraction), a.root, resume=not a.fresh)
    print(f"fine-tuned model written to {out}")


def cmd_evaluate(a: argparse.Namespace) -> None:
    from .evaluate import evaluate

    evaluate(a.model, a.dataset, a.out, run=a.run, cases=a.cases, n_cases=a.n, seed=a.seed,
             echoes=not a.no_echoes, data=a.data, max_echoes=a.max_echoes)


def cmd_export(a: argparse.Namespace) -> None:
    from .export import export

    notes = a.notes.read_text(encoding="utf-8") if a.notes else ""
    out = export(a.run, a.root, a.name, a.version, a.eval, a.description, notes=notes, benchmark_dir=a.benchmark,
                 calibration=a.calibration, weights=a.weights)
    print(f"model written to {out}")


def cmd_calibrate(a: argparse.Namespace) -> None:
    from .calibrate import run_calibration

    run_calibration(a.model, a.dataset, a.out)


def cmd_benchmark(a: argparse.Namespace) -> None:
    from .benchmark import run_benchmark

    run_benchmark(a.model, a.out, a.dataset, cases=a.cases, echoes=not a.no_echoes, data=a.data, tta=a.tta)


def cmd_ceiling(a: argparse.Namespace) -> None:
    from .ceiling import grid_ceiling

    for form in a.form:
        grid_ceiling(a.dataset, a.spacing, form, cases=a.cases, out=a.out / f"ceiling-{form}.csv" if a.out else None)


def build_parser() -> argparse.ArgumentParser:
    from KneeSegmentationLib.cli.args import HelpFormatter

    parser = argparse.ArgumentParser(prog="kneeseg-train", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser = sub.add_parser
    sub.add_parser = lambda *a, **k: add_parser(*a, formatter_class=HelpFormatter, **k)  # every option's default

    p = sub.add_parser("prepare", help="fetch the mskt label maps and the LLP26 shape model, build a dataset")
    p.add_argument("--out", required=True, type=Path, help="output folder (new; datasets are never overwritten)")
    p.add_argument("--shape-train", type=int, default=120,
                   help="knees drawn from the LLP26 shape model for training (left and right)")
    p.add_argument("--shape-val", type=int, default=6,
                   help="held-out shape-model knees validating the training (6: the fixed benchmark's)")
    p.add_argument("--shape-test", type=int, default=4,
                   help="held-out shape-model knees that only the benchmark sees (their own seed range)")
    p.add_argument("--shape-spacing", type=float, default=1.0, help="grid (mm) of the shape-model maps")
    p.add_argument("--quiet-draws", action="store_true", help="do not list each refused shape-model draw")
    p.add_argument("--data", type=Path, help="an extracted mskt data/ folder (default: fetch with pip)")
    p.add_argument("--cache", type=Path, help="download cache (default $KNEESEG_CACHE or ~/.cache/kneesegmentation)")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("preview", help="PNG grid of synthetic samples and the generator's speed")
    p.add_argument("--dataset", required=True, type=Path, help="folder written by `prepare`")
    p.add_argument("--out", type=Path, default=Path("preview.png"), help="PNG to write")
    p.add_argument("--n", type=int, default=6, help="samples to draw")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--spacing", type=_spacing, default=TrainConfig.spacing_mm,
                   help="grid spacing (mm): one number, or three (x,y,z)")
    p.add_argument("--crop", type=_ints, default=TrainConfig().crop, help="sample size (voxels)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.set_defaults(func=cmd_preview)

    p = sub.add_parser("train", help="train (or resume) a model on synthetic images")
    _add_train_options(p)
    p.add_argument("--init-model", type=Path, help="start from this model version's weights (its network, "
                   "spacing, window and normalization; a 3-bone model grows a Patella head)")
    p.add_argument("--widen", type=_ints, metavar="FEATURES",
                   help="with --init-model: widen its stages to these widths (e.g. 16,32,64,128), computing the "
                   "same function at the start (Net2WiderNet)")
    p.add_argument("--regrid", type=_spacing, metavar="SPACING",
                   help="with --init-model: train its weights on this model grid (mm, e.g. 1.3), the window "
                   "scaled to the same field of view")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("finetune", help="continue a model on corrected cases mixed with synthetic images")
    _add_train_options(p)
    p.add_argument("--model", required=True, type=Path, help="model version folder to start from")
    p.add_argument("--cases", required=True, type=Path, help="folder of corrected cases")
    p.add_argument("--case-fraction", type=float, default=TrainConfig.case_fraction, help="share of corrected cases in each batch")
    p.add_argument("--root", type=Path, default=None, help="models root for the new version (default: user models)")
    # lr and crop measured on knee-bones v3 (README, "Learning from corrections"): 48^3 crops or lr 5e-4 made a
    # converged model worse everywhere; the parent's own crop (InstanceNorm sees the context it was trained
    # with) at lr 1e-4 improved the corrected contrast without forgetting.
    p.set_defaults(func=cmd_finetune, steps=200, warmup=20, lr=1e-4, crop=None)

    p = sub.add_parser("evaluate", help="metrics on held-out maps (fixed contrasts), corrected cases, echoes")
    p.add_argument("--model", type=Path, help="model version folder (or use --run-dir)")
    p.add_argument("--run-dir", dest="run", type=Path, help="run folder: evaluates its best.pt")
    p.add_argument("--dataset", required=True, type=Path, help="folder written by `prepare`")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--cases", type=Path, help="folder of corrected cases")
    p.add_argument("--n", type=int, default=4, help="rendered cases per map")
    p.add_argument("--seed", type=int, default=7, help="random seed")
    p.add_argument("--no-echoes", action="store_true", help="skip the real multi-echo consistency check")
    p.add_argument("--max-echoes", type=int, default=0, help="only the first N echoes (0: all)")
    p.add_argument("--data", type=Path, help="mskt data/ folder (default: fetch with pip)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("export", help="write a run's best weights as a new model version with its card")
    p.add_argument("--run-dir", dest="run", required=True, type=Path, help="run folder written by `train`")
    p.add_argument("--root", type=Path, default=None, help="models root (default: the bundled Resources/Models)")
    p.add_argument("--name", default="knee-bones", help="model family name")
    p.add_argument("--version", type=int, default=None, help="version number (default: the next free one)")
    p.add_argument("--eval", type=Path, help="evaluation folder (metrics.json) to record in the card")
    p.add_argument("--benchmark", type=Path, help="benchmark folder (summary.json) of these weights, for the card")
    p.add_argument("--description", default="", help="one line for the model card")
    p.add_argument("--notes", type=Path, help="Markdown appended to MODEL_CARD.md (known limits, observations)")
    p.add_argument("--weights", choices=("best", "last"), default="best",
                   help="the weights of the best validation (best.pt) or of the last step (last.pt)")
    p.add_argument("--calibration", type=Path, help="calibration.json (or its folder) from `calibrate`: "
                   "its logit offsets go into the card")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("calibrate", help="fit per-bone logit offsets on the validation maps (undoes the size "
                       "bias of the class-weighted loss)")
    p.add_argument("--model", required=True, type=Path, help="model version folder (e.g. an exported candidate)")
    p.add_argument("--dataset", type=Path, default=Path("runs/dataset3"), help="dataset with val maps")
    p.add_argument("--out", required=True, type=Path, help="folder for calibration.json")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("benchmark", help="the fixed benchmark: held-out maps in 3 planes and contrasts, full pipeline")
    p.add_argument("--model", required=True, type=Path, help="model version folder")
    p.add_argument("--out", required=True, type=Path, help="folder for benchmark.csv, summary.json, benchmark.png")
    p.add_argument("--dataset", type=Path, default=Path("runs/dataset3"), help="dataset with val/test maps")
    p.add_argument("--cases", choices=("all", "quick"), default="all", help="quick: 3 cases (smoke runs)")
    p.add_argument("--no-echoes", action="store_true", help="skip the real multi-echo consistency check")
    p.add_argument("--data", type=Path, help="mskt data/ folder (default: fetch with pip)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="average with the left-right mirrored prediction (default: the pipeline's choice for "
                   "the model, which users get)")
    p.set_defaults(func=cmd_benchmark)

    p = sub.add_parser("ceiling", help="the benchmark Dice that perfect probabilities on a model grid reach (how "
                       "much a grid or a target form allows)")
    p.add_argument("--dataset", type=Path, default=Path("runs/dataset3"), help="dataset with val/test maps")
    p.add_argument("--spacing", type=float, nargs="+", default=[1.3], metavar="MM",
                   help="model grid spacing: one value (isotropic) or x y z")
    p.add_argument("--form", choices=("centre", "fractions"), nargs="+", default=["centre", "fractions"],
                   help="perfect one-hot centre classes and/or perfect class fractions")
    p.add_argument("--cases", choices=("all", "quick"), default="all", help="quick: 3 cases")
    p.add_argument("--out", type=Path, help="folder for ceiling-FORM.csv (one row per case x bone)")
    p.set_defaults(func=cmd_ceiling)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except KneeSegError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
