"""``kneeseg batch IN_DIR OUT_DIR``: every case of a folder, one model load, resumable, shardable.

A case is an image file of ``IN_DIR`` (``io.IMAGE_SUFFIXES``) or a sub-folder holding a DICOM series; its
outputs are named after it (``OUT_DIR/knee01.seg.nrrd``, ``knee01.nii.gz`` …). A case whose outputs all exist
is skipped (outputs are written atomically, so an existing file is a whole file): re-running after an
interruption resumes. ``--force`` runs the finished cases too and replaces their outputs; without it a case
with only some of its outputs on disk fails (``outputs.OutputPlan``: an existing file is replaced only with
``--force``, an input never). A case that fails is reported and skipped; the others go on. ``--shard I/N`` takes every
N-th case from the I-th (1-based), so N machines share a folder without sharing a case. At the end a summary
table (one line per case) is printed and written to ``OUT_DIR/summary.csv`` (``summary-I-of-N.csv`` for a shard).

    kneeseg batch scans/ results/ --labelmap --statistics --shard 2/4
"""
from __future__ import annotations

import argparse
import csv
import io as _io
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..constants import BONES
from ..errors import InputError, KneeSegError
from ..files import write_text_atomically
from ..segment.io import IMAGE_SUFFIXES
from ..results.labeltable import stem_of
from ..results.outputs import Outputs, check_writable_folder

SEG_SUFFIX = ".seg.nrrd"


@dataclass(frozen=True)
class Shard:
    index: int  # 1-based
    count: int

    def take(self, items: list) -> list:
        return items[self.index - 1::self.count]


def parse_shard(text: str) -> Shard:
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError("--shard is I/N, e.g. 2/4 (the second of four shards)")
    if not 1 <= i <= n:
        raise argparse.ArgumentTypeError(f"--shard {text}: I must be between 1 and N")
    return Shard(i, n)


@dataclass(frozen=True)
class Case:
    name: str
    path: Path
    dicom: bool


def find_cases(in_dir: Path) -> list[Case]:
    """Image files and sub-folders (DICOM series) of ``in_dir``, sorted by name; hidden entries and
    segmentation files are not cases."""
    if not in_dir.is_dir():
        raise InputError(f"{in_dir}: not a folder")
    cases = []
    for p in sorted(in_dir.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_dir():
            cases.append(Case(p.name, p, True))
        elif p.name.lower().endswith(IMAGE_SUFFIXES) and not p.name.endswith(SEG_SUFFIX):
            cases.append(Case(stem_of(p), p, False))
    names = [c.name for c in cases]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InputError(f"{in_dir}: several cases would write the same outputs: {', '.join(duplicates)}")
    return cases


@dataclass
class BatchOptions:
    seg: bool = True
    labelmap: bool = False
    statistics: bool = False
    dicom_seg: bool = False
    preview: bool = False

    def outputs_for(self, case: Case, out_dir: Path) -> Outputs:
        base = out_dir / case.name
        return Outputs(seg=base.with_name(case.name + SEG_SUFFIX) if self.seg else None,
                       labelmap=base.with_name(case.name + ".nii.gz") if self.labelmap else None,
                       statistics=base.with_name(case.name + ".statistics.json") if self.statistics else None,
                       dicom_seg=base.with_name(case.name + ".dcm") if self.dicom_seg and case.dicom else None,
                       preview=base.with_name(case.name + ".png") if self.preview else None)


@dataclass
class CaseReport:
    case: str
    status: str  # "done", "skipped" (already done) or "failed"
    message: str = ""
    volumes_ml: dict[str, float] = field(default_factory=dict)
    laterality: str | None = None
    seconds: float = 0.0


def run_batch(in_dir: Path, out_dir: Path, options: BatchOptions, settings, shard: Shard = Shard(1, 1),
              echo: int | None = None, quiet: bool = False,
              segment: Callable | None = None, force: bool = False) -> list[CaseReport]:
    """Segments every case of ``in_dir`` (of this shard) that is not finished (every case with ``force``);
    returns one report per case. ``segment(image, settings)`` defaults to ``pipeline.run_segmentation``
    (tests may pass their own)."""
    import numpy as np
    import SimpleITK as sitk
    from tqdm import tqdm

    from ..results.statistics import absent_bones
    from ..segment.io import read_image
    from ..segment.pipeline import resolve_model, run_segmentation

    segment = segment or (lambda image, s: run_segmentation(image, s))
    cases = shard.take(find_cases(in_dir))
    if options.dicom_seg:
        try:
            import highdicom  # noqa: F401
        except ImportError:
            from ..results.dicomseg import MISSING

            raise KneeSegError(MISSING) from None
    check_writable_folder(out_dir, "OUT_DIR")
    out_dir.mkdir(parents=True, exist_ok=True)
    todo = [c for c in cases if force or not all(p.is_file() for p in options.outputs_for(c, out_dir).paths())]
    reports = {c.name: CaseReport(c.name, "skipped", "already done") for c in cases if c not in todo}
    if todo:
        settings.model = resolve_model(settings.model)  # one model load for all cases
    for case in tqdm(todo, desc="cases", unit="case", disable=quiet, file=sys.stderr):
        t0 = time.perf_counter()
        outputs = options.outputs_for(case, out_dir)
        try:
            plan = outputs.check(case.path, force=force)  # inputs, existing files, writable: before the work
            image = read_image(case.path, echo=echo)
            result = segment(image, settings)
            outputs.write(plan, image, case.path, echo, result, title=f"{case.name} — {result.model.tag}")
            labels = sitk.GetArrayViewFromImage(result.labelmap)
            voxel_ml = float(np.prod(result.labelmap.GetSpacing())) / 1000.0
            volumes = {b.name: round(float(np.count_nonzero(labels == b.label)) * voxel_ml, 1) for b in BONES}
            missing = "; ".join(absent_bones(result))
            reports[case.name] = CaseReport(case.name, "done", missing, volumes, result.laterality,
                                            time.perf_counter() - t0)
        except KeyboardInterrupt:
            raise
        except Exception as error:  # noqa: BLE001 - one bad case must not stop the batch
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            reports[case.name] = CaseReport(case.name, "failed", message, seconds=time.perf_counter() - t0)
            if not quiet:
                tqdm.write(f"kneeseg: {case.name}: failed: {message}", file=sys.stderr)
    return [reports[c.name] for c in cases]


SUMMARY_COLUMNS = ("case", "status", *(f"{b.name} ml" for b in BONES), "side", "seconds", "message")


def _row(r: CaseReport) -> list[str]:
    return [r.case, r.status, *(f"{r.volumes_ml[b.name]:.1f}" if b.name in r.volumes_ml else "" for b in BONES),
            r.laterality or "", f"{r.seconds:.1f}" if r.status == "done" else "", r.message]


def summary_table(reports: list[CaseReport]) -> str:
    rows = [list(SUMMARY_COLUMNS)] + [_row(r) for r in reports]
    widths = [max(len(row[i]) for row in rows) for i in range(len(SUMMARY_COLUMNS) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1] for row in rows]
    counts = {s: sum(r.status == s for r in reports) for s in ("done", "skipped", "failed")}
    lines.append(f"{len(reports)} cases: {counts['done']} done, {counts['skipped']} already done, "
                 f"{counts['failed']} failed")
    return "\n".join(line.rstrip() for line in lines)


def write_summary(reports: list[CaseReport], out_dir: Path, shard: Shard) -> Path:
    name = "summary.csv" if shard.count == 1 else f"summary-{shard.index}-of-{shard.count}.csv"
    buffer = _io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(SUMMARY_COLUMNS)
    writer.writerows(_row(r) for r in reports)
    return write_text_atomically(out_dir / name, buffer.getvalue())


def add_batch_command(sub) -> Callable[[argparse.Namespace], int]:
    from .args import HelpFormatter, add_run_options

    p = sub.add_parser("batch", formatter_class=HelpFormatter, help="segment every case of a folder (resumable)",
                       description=__doc__.split("\n\n")[1] if __doc__ else None)
    p.add_argument("in_dir", type=Path, metavar="IN_DIR", help="folder of image files and/or DICOM series folders")
    p.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="folder for the outputs (created if needed)")
    p.add_argument("--no-seg", action="store_true", help="do not write CASE.seg.nrrd")
    p.add_argument("--labelmap", action="store_true", help="also write CASE.nii.gz with its label table")
    p.add_argument("--statistics", action="store_true", help="also write CASE.statistics.json")
    p.add_argument("--dicom-seg", action="store_true", help="also write CASE.dcm for DICOM cases (needs highdicom)")
    p.add_argument("--preview", action="store_true", help="also write CASE.png")
    p.add_argument("--shard", type=parse_shard, default="1/1", metavar="I/N", help="I/N: only every N-th case from the "
                   "I-th, for N parallel runs")
    add_run_options(p)
    return batch_command


def batch_command(a: argparse.Namespace) -> int:
    from ..segment.pipeline import SegmentationSettings

    options = BatchOptions(seg=not a.no_seg, labelmap=a.labelmap, statistics=a.statistics, dicom_seg=a.dicom_seg,
                           preview=a.preview)
    if not any(vars(options).values()):
        raise InputError("nothing to write: --no-seg leaves no output; add --labelmap or --statistics")
    settings = SegmentationSettings(model=a.model, device=a.device, n4=not a.no_n4, roi=a.roi, tta=a.tta)
    reports = run_batch(a.in_dir, a.out_dir, options, settings, a.shard, a.echo, a.quiet, force=a.force)
    print(summary_table(reports))
    print(f"summary: {write_summary(reports, a.out_dir, a.shard)}")
    return 1 if any(r.status == "failed" for r in reports) else 0
