"""``kneeseg``: the pipeline without Slicer.

    kneeseg segment knee.nrrd -o knee.seg.nrrd --preview knee.png --statistics knee.json
    kneeseg segment dicom_folder/ --echo 2 --roi -70,-10,0,140,140,140 -o out.seg.nrrd --labelmap out.nii.gz
    kneeseg segment dicom_folder/ --dicom-seg out.dcm          (needs the optional extra: kneesegmentation[dicom])
    kneeseg batch IN_DIR OUT_DIR --statistics csv --shard 1/4
    kneeseg info [MODEL]          kneeseg models          kneeseg --version

Failures print one line ``kneeseg: error: …`` and exit with status 1 (2 for usage errors, 130 when
interrupted, saying what was and was not written); nothing is left half-written because every output is
written to a temporary file and renamed. Outputs are checked before the work (``outputs``): suffixes, an
input is never overwritten, an existing output only with ``--force``, folders must be writable.
Only what a command needs is imported: no vtk or slicer at all (the .seg.nrrd is written by ``segfile``),
torch only once a model is needed.
"""
from __future__ import annotations

import argparse
import builtins
import json
import sys
import time
from pathlib import Path
from typing import Sequence

from .training import add_training_commands
from .args import HelpFormatter, add_run_options, normalize_argv, version_string
from ..errors import Cancelled, Interrupted, KneeSegError
from ..names import printable
from ..progress import CancelToken
from .signals import os_error_message, quiet_stdout, terminate_as_interrupt

EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a reader that went away


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kneeseg", formatter_class=HelpFormatter,
                                     description="Femur, Tibia, Fibula and Patella segmentation of knee MRI.",
                                     epilog="kneeseg COMMAND --help describes each command.")
    parser.add_argument("--version", action="version", version=version_string())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    seg = sub.add_parser("segment", formatter_class=HelpFormatter,
                         help="segment one knee MRI and write the bones as .seg.nrrd, labelmap, DICOM SEG ...",
                         description="Segments Femur, Tibia, Fibula and Patella in one knee MRI (any orientation, "
                         "any spacing) and writes the requested outputs. It also tells the left from the right "
                         "knee (fibula lateral to the tibia) and reports bones it did not find.")
    seg.add_argument("image", type=Path, metavar="IMAGE", help="the knee MRI: a .nrrd, .nii/.nii.gz or .mha/.mhd file, or a DICOM "
                     "series (its folder or any one of its files)")
    seg.add_argument("-o", "--output", type=Path, metavar="OUT.seg.nrrd",  help="segmentation to write (.seg.nrrd, editable in Slicer)")
    seg.add_argument("--labelmap", type=Path, metavar="OUT.nii.gz",  help="also write a labelmap (0 background, 1 Femur, 2 Tibia, "
                     "3 Fibula, 4 Patella; .nrrd, .nii.gz, .mha) with its label table beside it "
                     "(NAME.labels.json and NAME.ctbl)")
    seg.add_argument("--statistics", type=Path, metavar="OUT.json|OUT.csv",  help="also write per-segment volume (ml), voxel count, mean "
                     "intensity, found or not, and the knee's side (.json or .csv)")
    seg.add_argument("--dicom-seg", type=Path, metavar="OUT.dcm",  help="also write a DICOM SEG referencing the source series (.dcm; "
                     "DICOM input only; needs highdicom)")
    seg.add_argument("--uncertainty", type=Path, metavar="OUT.nrrd",  help="also write the per-voxel entropy (0..1) as an image")
    seg.add_argument("--preview", type=Path, metavar="OUT.png",  help="also write a PNG with the segments over the image")
    add_run_options(seg)

    from .batch import add_batch_command

    COMMANDS["batch"] = add_batch_command(sub)

    info = sub.add_parser("info", formatter_class=HelpFormatter, help="print a model's metadata and validation "
                          "metrics", description="Prints a model's card: labels, network, input, metrics.")
    info.add_argument("model", type=Path, nargs="?", help="model version folder (default: the default model)")
    info.add_argument("--json", action="store_true", help="print the whole model card as JSON")
    models = sub.add_parser("models", help="list the installed model versions", description="Lists the installed "
                            "model versions with their validation Dice; * marks the default. Reads the model cards "
                            "only: torch is not loaded unless --devices asks it which devices this machine offers.")
    models.add_argument("--devices", action="store_true", help="also list the devices torch finds here (cuda, mps, cpu)")
    COMMANDS.update(add_training_commands(sub))  # save-case, cases, retrain, select (cli/training.py)
    for choice in sub._choices_actions:  # a command's --help starts with what it does and shows defaults
        command = sub.choices[choice.dest]
        command.description = command.description or (choice.help[:1].upper() + choice.help[1:] + ".")
        command.formatter_class = HelpFormatter
    return parser


def segment_outputs(args: argparse.Namespace):
    from ..results.outputs import Outputs

    return Outputs(seg=args.output, labelmap=args.labelmap, uncertainty=args.uncertainty, preview=args.preview,
                   statistics=args.statistics, dicom_seg=args.dicom_seg)


def settings_from(args: argparse.Namespace, uncertainty: bool = False):
    from ..segment.pipeline import SegmentationSettings

    return SegmentationSettings(model=args.model, device=args.device, n4=not args.no_n4, roi=args.roi,
                                tta=args.tta, uncertainty=uncertainty)


def _segment(args: argparse.Namespace) -> int:
    outputs = segment_outputs(args)
    # suffixes, DICOM SEG prerequisites, inputs, existing files (--force), writable folders: before any work
    plan = outputs.check(args.image, force=args.force)
    from ..segment.io import read_image
    from ..segment.pipeline import run_segmentation

    t0 = time.perf_counter()
    image = read_image(args.image, echo=args.echo)
    read_s = time.perf_counter() - t0
    settings = settings_from(args, uncertainty=args.uncertainty is not None)
    result = _run_with_progress(run_segmentation, image, settings, quiet=args.quiet)
    timings = {"read": read_s, **result.timings}
    t1 = time.perf_counter()
    outputs.write(plan, image, args.image, args.echo, result, title=f"{args.image.name} — {result.model.tag} on {result.device}")
    timings["write"] = time.perf_counter() - t1
    _report(result, timings, time.perf_counter() - t0)
    return 0


def _run_with_progress(run, image, settings, quiet: bool):
    from tqdm import tqdm

    cancel = CancelToken()
    with tqdm(total=100, disable=quiet, bar_format="{l_bar}{bar}| {elapsed}", file=sys.stderr, leave=False) as bar:
        shown = [("", -1)]  # the (stage, percent) on screen

        def progress(fraction: float, stage: str) -> None:
            percent = round(100 * fraction)
            if shown[0] == (stage, percent):
                return  # N4 reports every 50 ms: redraw only what changed (a log file would fill up)
            shown[0] = (stage, percent)
            bar.set_description_str(stage, refresh=False)
            bar.n = percent
            bar.refresh()

        try:
            return run(image, settings, progress=progress, cancel=cancel)
        except KeyboardInterrupt:
            cancel.cancel()
            raise


def _report(result, timings: dict[str, float], total: float) -> None:
    from ..results.statistics import result_line  # the Slicer panel's status line says the same

    stages = ", ".join(f"{k} {v:.2f}s" for k, v in timings.items())
    print(f"model {result.model.tag} on {result.device}; {result_line(result)}")
    print(f"timings: {stages}; total {total:.2f}s")
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)


def _card_of(entry_path: Path | None):
    """(card, folder) of a model version folder, or of the default model."""
    from ..models.card import read_card
    from ..models.registry import default_model

    if entry_path is None:
        entry = default_model()
        return entry.card, entry.path
    return read_card(entry_path), entry_path


def _info(args: argparse.Namespace) -> int:
    from ..models.card import plain_summary

    card, path = _card_of(args.model)
    d = {"path": str(path), **card.to_dict()}
    if args.json:
        builtins.print(json.dumps(d, indent=2))  # JSON escapes every control character itself
        return 0
    print = _print_clean
    print(plain_summary(card))
    print(f"  {card.tag} in {path}")
    pre = d["input"]
    print(f"  created {d['created']}" + (f", fine-tuned from {d['parent']}" if d.get("parent") else ""))
    if d.get("description"):
        print(f"  {d['description']}")
    print(f"  labels: {', '.join(f'{k} {v}' for k, v in d['labels'].items())}")
    print(f"  network: {d['network']['arch']} features {d['network']['features']}")
    print(f"  input: spacing {pre['spacing_mm']} mm, patch {pre['patch_size']}, orientation {pre['orientation']}, "
          f"normalization {pre['normalization']}")
    if d.get("output"):
        print(f"  output: logit offsets {d['output']['logit_offsets']} "
              "(background first; calibrated on validation anatomy)")
    print(f"  weights sha256 {d['weights']['sha256']}")
    for section in ("training", "metrics"):
        if d.get(section):
            print(f"  {section}:")
            for k, v in d[section].items():
                print(f"    {k}: {json.dumps(v) if isinstance(v, (dict, list)) else v}")
    return 0


def _print_clean(*values, **kwargs) -> None:
    """``print`` for text taken from model cards: control characters (terminal escapes) are not passed on."""
    builtins.print(*(printable(v, newlines=True) for v in values), **kwargs)


def _models(args: argparse.Namespace) -> int:
    from ..models.card import format_metrics
    from ..models.registry import ModelEntry, default_model, list_models

    print = _print_clean
    entries: list[ModelEntry] = list_models()
    if not entries:
        print("no models installed")
        return 0
    default = default_model().path
    for e in entries:
        mark = "*" if e.path == default else " "
        print(f"{mark} {e.card.tag}  {e.path}\n    {format_metrics(e.card.metrics)}")
    print("(* the default model)")
    if args.devices:
        from ..segment.infer import available_devices  # torch: only when asked

        print(f"devices here: {', '.join(available_devices())}")
    else:
        print("(kneeseg models --devices also lists the devices torch finds here)")
    return 0


COMMANDS = {"segment": _segment, "info": _info, "models": _models}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(normalize_argv(sys.argv[1:] if argv is None else argv))
    restore = terminate_as_interrupt()
    try:
        code = COMMANDS[args.command](args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handlers, not at the interpreter's exit
        return code
    except Interrupted as e:
        print(f"kneeseg: interrupted; {e}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (KeyboardInterrupt, Cancelled):
        print("kneeseg: interrupted; nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        quiet_stdout()  # `kneeseg info | head -1`: the reader has gone; not an error worth a traceback
        return EXIT_BROKEN_PIPE
    except KneeSegError as e:
        print(f"kneeseg: error: {printable(e)}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as e:
        print(f"kneeseg: error: {printable(os_error_message(e))}", file=sys.stderr)
        return EXIT_ERROR
    except MemoryError:
        print("kneeseg: error: out of memory; try --roi to segment a smaller region", file=sys.stderr)
        return EXIT_ERROR
    finally:
        restore()


if __name__ == "__main__":
    sys.exit(main())
