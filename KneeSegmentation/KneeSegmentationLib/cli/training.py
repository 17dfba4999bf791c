"""``kneeseg`` subcommands of the correct-and-retrain loop (registered by ``cli.main.build_parser``):

    kneeseg save-case knee.nrrd knee-corrected.seg.nrrd --original knee-model.seg.nrrd [--dataset DIR]
    kneeseg cases [--dataset DIR]
    kneeseg retrain [--cases DIR] [--model MODEL] [--steps N] [--synthetic DIR] [--make-default auto|yes|no]
    kneeseg select knee-bones/v3          # or a model folder: the default model from now on (rollback)

The corrected (and original) segmentation may be a Slicer ``.seg.nrrd`` (exported onto the image's grid
through MRML, exactly) or a labelmap file (0 background, 1 Femur, 2 Tibia, 3 Fibula, 4 Patella) on the image's grid.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

import SimpleITK as sitk

from ..errors import KneeSegError, ModelError


def add_training_commands(sub: argparse._SubParsersAction) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Adds the subcommands to ``sub`` and returns their handlers by name."""
    p = sub.add_parser("save-case", help="save an image and its corrected segmentation as a training case")
    p.add_argument("image", type=Path, help="the image that was segmented (file or DICOM folder)")
    p.add_argument("corrected", type=Path, help="corrected segmentation: .seg.nrrd or a labelmap on the image grid")
    p.add_argument("--original", type=Path, help="the model's first result (.seg.nrrd or labelmap): records how "
                                                 "much was edited")
    p.add_argument("--echo", type=int, default=None, help="echo index of a multi-echo DICOM series")
    p.add_argument("--dataset", type=Path, help="cases folder (default $KNEESEG_DATASET or "
                                                "~/.kneesegmentation/TrainingCases)")
    p.add_argument("--source", default=None, help="where the image came from (default: its file name)")
    p.add_argument("--model-tag", default=None, help="model that produced the original (default: read from the "
                                                     "segmentation's tags)")

    p = sub.add_parser("cases", help="list the saved training cases")
    p.add_argument("--dataset", type=Path, help="cases folder (default: as for save-case)")

    p = sub.add_parser("retrain", help="fine-tune the model on the saved cases, as a new version")
    p.add_argument("--cases", type=Path, help="cases folder (default: as for save-case)")
    p.add_argument("--model", type=Path, help="model version folder to start from (default: the default model)")
    p.add_argument("--steps", type=int, default=200, help="fine-tuning steps")
    p.add_argument("--synthetic", type=Path, help="the trainer's synthesis dataset (default $KNEESEG_SYNTH_DATASET "
                                                  "or ~/.kneesegmentation/SynthDataset)")
    p.add_argument("--root", type=Path, help="models root for the new version (default: user models)")
    p.add_argument("--make-default", choices=("auto", "yes", "no"), default="auto",
                   help="auto: only if better than the parent on held-out cases")
    p.add_argument("--no-holdout", action="store_true", help="train on every case (the comparison is then "
                                                             "on seen cases and never decides the default)")
    p.add_argument("--device", default="auto", help="device of the comparison")
    p.add_argument("--no-n4", action="store_true", help="comparison without N4")
    p.add_argument("--trainer-arg", action="append", default=[], metavar="ARG",
                   help="extra option for `python -m trainer finetune` (repeat), e.g. --trainer-arg=--steps=400")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")

    p = sub.add_parser("select", help="make a model version the default (rollback to an older one)")
    p.add_argument("model", help="model folder or tag (name/vN)")
    p.add_argument("--root", type=Path, help="where the selection is stored (default: user models)")
    return {"save-case": save_case_command, "cases": cases_command, "retrain": retrain_command,
            "select": select_command}


# ------------------------------------------------------------------------------------------ save-case
def read_labels(path: Path, image: sitk.Image) -> tuple[sitk.Image, str | None]:
    """A labelmap on ``image``'s grid from a ``.seg.nrrd`` (via MRML) or a labelmap file; and the model tag
    kept on the segments, if any."""
    from ..segment.io import check_readable

    check_readable(path)
    if not path.name.endswith(".seg.nrrd"):
        try:
            return sitk.ReadImage(str(path)), None
        except RuntimeError as e:
            raise KneeSegError(f"{path}: unreadable labelmap ({str(e).strip().splitlines()[-1]})") from e
    from ..scene.mrml import create_scene, volume_node_from_image
    from ..scene.segments import load_segmentation, model_tag_of, segmentation_grid_mismatch, segmentation_to_labelmap

    why = segmentation_grid_mismatch(path, image)  # as a labelmap file of another grid is refused
    if why:
        raise KneeSegError(f"{path.name} is not on the image's grid ({why}); export the segmentation with the "
                           "image as reference geometry")
    scene = create_scene()
    volume = volume_node_from_image(scene, image, "image")
    node = load_segmentation(scene, path)
    return segmentation_to_labelmap(node, volume), model_tag_of(node)


def save_case_command(a: argparse.Namespace) -> int:
    from ..learn.cases import save_training_case
    from ..segment.io import read_image

    image = read_image(a.image, echo=a.echo)
    corrected, tag = read_labels(a.corrected, image)
    original, original_tag = (read_labels(a.original, image) if a.original else (None, None))
    folder = save_training_case(image, corrected, a.dataset, original=original, source=a.source or a.image.name,
                                model_tag=a.model_tag or original_tag or tag)
    meta = json.loads((folder / "case.json").read_text(encoding="utf-8"))
    edit = meta.get("edit")
    print(f"case saved: {folder}")
    if edit:
        print("edit (Dice model vs correction): " + ", ".join(f"{k} {v:.3f}" for k, v in edit["dice"].items()))
    return 0


def cases_command(a: argparse.Namespace) -> int:
    from ..learn.cases import list_cases
    from ..paths import training_cases_dir

    cases = list_cases(a.dataset)
    print(f"{len(cases)} case(s) in {a.dataset or training_cases_dir()}")
    for c in cases:
        edit = ", ".join(f"{k} {v:.3f}" for k, v in (c.edit_dice or {}).items()) or "no model output recorded"
        print(f"  {c.id}  {c.source}  model {c.model}  edit Dice: {edit}")
    return 0


# -------------------------------------------------------------------------------------------- retrain
def retrain_command(a: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..learn.retrain import RetrainJob
    from ..learn.status import RetrainSettings

    settings = RetrainSettings(model=a.model, cases=a.cases, synthetic=a.synthetic, root=a.root, steps=a.steps,
                               holdout=not a.no_holdout, make_default=a.make_default, device=a.device,
                               n4=not a.no_n4, trainer_args=tuple(a.trainer_arg))
    job = RetrainJob(settings).start()
    bar = tqdm(total=a.steps, disable=a.quiet, file=sys.stderr, desc="fine-tuning", dynamic_ncols=True)
    try:
        status = job.poll()
        while not status.finished:
            bar.total = status.total_steps
            bar.n = status.step
            bar.set_description(status.phase)
            if status.loss:
                bar.set_postfix(loss=f"{status.loss[-1][1]:.3f}",
                                val=f"{status.validation[-1][1]['score']:.3f}" if status.validation else "-")
            bar.refresh()
            status = job.wait(timeout=1.0)
    except KeyboardInterrupt:
        job.stop()
        raise
    finally:
        bar.close()
    if status.phase != "done":
        raise KneeSegError(status.error or f"retraining {status.phase}")
    r = status.result
    where = "held-out" if r.held_out else "training (not held out)"
    print(f"new version {r.tag} ({r.model}), fine-tuned from {r.parent} in {r.train_s:.0f} s")
    print(f"mean Dice on {where} cases: new {r.metrics['score']:.3f} {r.metrics['dice']}, "
          f"previous {r.parent_metrics['score']:.3f} {r.parent_metrics['dice']}")
    print(("default model is now " if r.made_default else "default model unchanged: ") + r.reason)
    return 0


# --------------------------------------------------------------------------------------------- select
def resolve_model_arg(text: str) -> Path:
    """A model folder, or a tag ``name/vN`` found among the installed models (must be unambiguous)."""
    from ..models.registry import list_models

    path = Path(text)
    if (path / "model.json").is_file():
        return path
    matches = [e.path for e in list_models() if f"{e.name}/v{e.version}" == text.strip("/")]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ModelError(f"{text} names several installed models ({', '.join(map(str, matches))}); give the folder")
    raise ModelError(f"no model {text!r}: give a model folder or a tag listed by `kneeseg models`")


def select_command(a: argparse.Namespace) -> int:
    from ..models.card import read_card
    from ..models.registry import select_default_model
    from ..paths import bundled_models_root, user_models_root

    path = resolve_model_arg(a.model)
    roots = [bundled_models_root(), user_models_root()] + ([a.root] if a.root else [])
    select_default_model(path, a.root, roots=roots)  # the roots `default_model` searches: else it changes nothing
    print(f"default model: {read_card(path).tag} ({path.resolve()})")
    return 0
