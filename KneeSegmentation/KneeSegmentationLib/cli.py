"""``kneeseg``: the pipeline without Slicer.

    kneeseg segment knee.nrrd -o knee.seg.nrrd --preview knee.png
    kneeseg segment dicom_folder/ --echo 2 --roi -70,-10,0,140,140,140 -o out.seg.nrrd --labelmap out.nrrd
    kneeseg info [MODEL]          kneeseg models

Failures print one line ``kneeseg: error: …`` and exit with status 1 (2 for usage errors, 130 when
interrupted, saying what was and was not written); nothing is left half-written because every output is
written to a temporary file and renamed. Outputs are checked before the work (``outputs.OutputPlan``): an
input is never overwritten, an existing output only with ``--force``.
"""
from __future__ import annotations

import argparse
import builtins
import json
import sys
import time
from pathlib import Path
from typing import Sequence

from .cli_training import add_training_commands
from .errors import Cancelled, KneeSegError
from .infer import DEVICES, available_devices
from .modelfile import ModelEntry, default_model, format_metrics, list_models, read_card
from .names import printable
from .outputs import IMAGE_SUFFIXES, PREVIEW_SUFFIXES, SEGMENTATION_SUFFIXES, Interrupted, OutputPlan
from .progress import CancelToken
from .signals import os_error_message, quiet_stdout, terminate_as_interrupt

EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a reader that went away


def _parse_roi(text: str):
    from .preprocess import RoiBox

    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError("ROI must be 6 numbers: cx,cy,cz,sx,sy,sz (LPS millimetres)")
    if len(values) != 6:
        raise argparse.ArgumentTypeError("ROI must be 6 numbers: cx,cy,cz,sx,sy,sz (LPS millimetres)")
    try:
        return RoiBox(tuple(values[:3]), tuple(values[3:]))
    except KneeSegError as e:
        raise argparse.ArgumentTypeError(str(e))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kneeseg", description="Femur, Tibia, Fibula and Patella segmentation of knee MRI.")
    sub = parser.add_subparsers(dest="command", required=True)

    seg = sub.add_parser("segment", help="segment an image (NRRD, NIfTI, MHA or a DICOM folder)")
    seg.add_argument("image", type=Path)
    seg.add_argument("-o", "--output", type=Path, help="segmentation to write (.seg.nrrd, editable in Slicer)")
    seg.add_argument("--labelmap", type=Path, help="also write a labelmap (0 bg, 1 femur, 2 tibia, 3 fibula)")
    seg.add_argument("--uncertainty", type=Path, help="also write the per-voxel entropy (0..1) as an image")
    seg.add_argument("--preview", type=Path, help="also write a PNG with the segments over the image")
    seg.add_argument("--model", type=Path, help="model version folder (default: newest bundled model)")
    seg.add_argument("--device", choices=DEVICES, default="auto", help="default auto: CUDA, then MPS, then CPU")
    seg.add_argument("--echo", type=int, default=None, help="echo index of a multi-echo DICOM series (default 0)")
    seg.add_argument("--roi", type=_parse_roi, help="region to segment: cx,cy,cz,sx,sy,sz in LPS mm (default: automatic)")
    seg.add_argument("--no-n4", action="store_true", help="skip N4 bias-field correction")
    seg.add_argument("--tta", action="store_true", help="average with the left-right mirrored prediction")
    seg.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    seg.add_argument("--force", action="store_true", help="replace existing output files (never an input)")

    info = sub.add_parser("info", help="print a model's metadata and validation metrics")
    info.add_argument("model", type=Path, nargs="?", help="model version folder (default: the default model)")
    info.add_argument("--json", action="store_true", help="print the whole model card as JSON")
    sub.add_parser("models", help="list the installed model versions")
    COMMANDS.update(add_training_commands(sub))  # save-case, cases, retrain, select (cli_training.py)
    return parser


def _segment(args: argparse.Namespace) -> int:
    from .io import read_image, write_image
    from .pipeline import SegmentationSettings, run_segmentation

    if not (args.output or args.labelmap):
        raise KneeSegError("nothing to write: give -o OUT.seg.nrrd and/or --labelmap OUT.nrrd")
    plan = segment_outputs(args)  # suffixes, inputs, existing files, writable folders: before the work
    t0 = time.perf_counter()
    image = read_image(args.image, echo=args.echo)
    read_s = time.perf_counter() - t0
    settings = SegmentationSettings(model=args.model, device=args.device, n4=not args.no_n4, roi=args.roi,
                                    tta=args.tta, uncertainty=args.uncertainty is not None)
    result = _run_with_progress(run_segmentation, image, settings, quiet=args.quiet)
    timings = {"read": read_s, **result.timings}
    t1 = time.perf_counter()
    with plan.writing():  # Ctrl-C or a full disk here says truthfully what was written
        if args.output:
            _write_segmentation(image, result, args.output)  # the first use of MRML imports it (~1.5 s)
            plan.done(args.output)
        if args.labelmap:
            plan.done(write_image(result.labelmap, args.labelmap))
        if args.uncertainty:
            plan.done(write_image(result.uncertainty, args.uncertainty))
        timings["write"] = time.perf_counter() - t1
        if args.preview:
            t2 = time.perf_counter()
            from .preview import write_preview

            plan.done(write_preview(image, result.labelmap, result.joint_center_lps, args.preview,
                                    title=f"{args.image.name} — {result.model.tag} on {result.device}"))
            timings["preview"] = time.perf_counter() - t2
    _report(result, timings, time.perf_counter() - t0)
    return 0


def segment_outputs(args: argparse.Namespace) -> OutputPlan:
    plan = OutputPlan(inputs=[args.image], force=args.force)
    plan.add(args.output, SEGMENTATION_SUFFIXES, "the segmentation (-o)")
    plan.add(args.labelmap, IMAGE_SUFFIXES, "the labelmap (--labelmap)")
    plan.add(args.uncertainty, IMAGE_SUFFIXES, "the uncertainty (--uncertainty)")
    plan.add(args.preview, PREVIEW_SUFFIXES, "the preview (--preview)")
    plan.check()
    return plan


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


def _write_segmentation(image, result, path: Path) -> None:
    from .mrml import create_scene, volume_node_from_image
    from .segments import labelmap_to_segmentation, save_segmentation

    scene = create_scene()
    volume = volume_node_from_image(scene, image, "image")
    seg = labelmap_to_segmentation(scene, result.labelmap, volume, model_tag=result.model.tag)
    save_segmentation(seg, path)


def _report(result, timings: dict[str, float], total: float) -> None:
    import numpy as np
    import SimpleITK as sitk

    from .constants import BONES

    labels = sitk.GetArrayViewFromImage(result.labelmap)
    voxel_ml = float(np.prod(result.labelmap.GetSpacing())) / 1000.0
    volumes = ", ".join(f"{b.name} {np.count_nonzero(labels == b.label) * voxel_ml:.1f} ml" for b in BONES)
    stages = ", ".join(f"{k} {v:.2f}s" for k, v in timings.items())
    print(f"model {result.model.tag} on {result.device}; {volumes}")
    print(f"timings: {stages}; total {total:.2f}s")
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)


def _describe(entry_path: Path | None) -> dict:
    if entry_path is None:
        entry = default_model()
        return {"path": str(entry.path), **entry.card.to_dict()}
    card = read_card(entry_path)
    return {"path": str(entry_path), **card.to_dict()}


def _info(args: argparse.Namespace) -> int:
    d = _describe(args.model)
    if args.json:
        print(json.dumps(d, indent=2))  # JSON escapes every control character itself
        return 0
    print = _print_clean
    pre = d["input"]
    print(f"{d['name']} v{d['version']}  ({d['path']})")
    print(f"  created {d['created']}" + (f", fine-tuned from {d['parent']}" if d.get("parent") else ""))
    if d.get("description"):
        print(f"  {d['description']}")
    print(f"  labels: {', '.join(f'{k} {v}' for k, v in d['labels'].items())}")
    print(f"  network: {d['network']['arch']} features {d['network']['features']}")
    print(f"  input: spacing {pre['spacing_mm']} mm, patch {pre['patch_size']}, orientation {pre['orientation']}, "
          f"normalization {pre['normalization']}")
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


def _models(_: argparse.Namespace) -> int:
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
    print(f"devices here: {', '.join(available_devices())}")
    return 0


COMMANDS = {"segment": _segment, "info": _info, "models": _models}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
