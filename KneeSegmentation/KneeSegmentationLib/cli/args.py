"""Command-line conventions shared by ``kneeseg`` and ``kneeseg-train``: ROI values with negative numbers,
help that shows defaults, ``--version``.

argparse takes ``--roi -70,-10,0,140,140,140`` for two options (the value starts with ``-`` and is not a plain
negative number), so ``normalize_argv`` joins such a value to its option (``--roi=-70,...``) before parsing.
"""
from __future__ import annotations

import argparse
import re
from typing import Sequence

# Options whose value is a comma-separated list of numbers that may start with a minus sign.
NUMBER_LIST_OPTIONS = ("--roi",)
_NUMBER_LIST = re.compile(r"^-?\d*\.?\d+(e[-+]?\d+)?(,\s*-?\d*\.?\d+(e[-+]?\d+)?)*$", re.IGNORECASE)


def normalize_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` with ``--roi -70,...`` rewritten as ``--roi=-70,...``; everything else unchanged."""
    out: list[str] = []
    i = 0
    argv = list(argv)
    while i < len(argv):
        arg = argv[i]
        if arg in NUMBER_LIST_OPTIONS and i + 1 < len(argv) and _NUMBER_LIST.match(argv[i + 1]):
            out.append(f"{arg}={argv[i + 1]}")
            i += 2
            continue
        out.append(arg)
        i += 1
    return out


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each option's default (unless it is None or False, or the help already names it) and keeps the
    description's line breaks (its examples)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action)


def version_string() -> str:
    from .. import __version__

    return f"kneeseg {__version__}"


def parse_roi(text: str):
    """``cx,cy,cz,sx,sy,sz`` (LPS mm) → ``preprocess.RoiBox``."""
    from ..errors import KneeSegError
    from ..segment.preprocess import RoiBox

    message = "ROI must be 6 numbers: cx,cy,cz,sx,sy,sz (LPS millimetres), e.g. --roi=-70,-10,0,140,140,140"
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(message)
    if len(values) != 6:
        raise argparse.ArgumentTypeError(message)
    try:
        return RoiBox(tuple(values[:3]), tuple(values[3:]))
    except KneeSegError as e:
        raise argparse.ArgumentTypeError(str(e))


def add_run_options(p: argparse.ArgumentParser) -> None:
    """The options of one segmentation run, shared by ``segment`` and ``batch``."""
    from pathlib import Path

    from ..constants import DEVICES

    p.add_argument("--model", type=Path, metavar="MODEL_DIR", help="model version folder, e.g. Resources/Models/knee-bones/v2 "
                   "(default: the selected or newest installed model)")
    p.add_argument("--device", choices=DEVICES, default="auto", help="auto: CUDA, then MPS, then CPU")
    p.add_argument("--echo", type=int, default=None, metavar="N", help="echo index of a multi-echo DICOM series, 0 = shortest "
                   "echo time (default: 0)")
    p.add_argument("--roi", type=parse_roi, metavar="CX,CY,CZ,SX,SY,SZ", help="region to segment: cx,cy,cz,sx,sy,sz in LPS mm, e.g. "
                   "--roi -70,-10,0,140,140,140 (default: the whole image)")
    p.add_argument("--no-n4", action="store_true", help="skip N4 bias-field correction")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="average with the left-right mirrored prediction (default: when the model was trained on "
                   "mirrored knees, as the bundled ones were; --no-tta: one pass, faster)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("--force", action="store_true", help="replace existing output files (never an input); batch: "
                   "also run the cases that are finished")
