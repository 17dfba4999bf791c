"""The outputs of a run: which files (``Outputs``), checked before the work and accounted for after it
(``OutputPlan``).

    outputs = Outputs(seg=Path("k.seg.nrrd"), labelmap=Path("k.nii.gz"), statistics=Path("k.json"))
    plan = outputs.check(image_path, force=args.force)   # one-line errors, nothing run
    written = outputs.write(plan, image, image_path, echo, result)

``Outputs`` knows what ``kneeseg segment`` (or one case of ``kneeseg batch``) writes: the ``.seg.nrrd``
(without MRML, ``segfile``), a labelmap with its label table beside it (``labeltable``), the uncertainty map,
statistics, a DICOM SEG, a preview; their suffixes and the DICOM SEG prerequisites. ``OutputPlan`` is the guard
every output goes through; its rules (documented in the README's "Guarantees"):
- an output is never an input, nor another output of the same run;
- an existing file is replaced only with ``force``; an existing folder never;
- its folder can be created and written to, which is tried (a temporary file is created and removed) rather
  than guessed from permission bits, so that root on a read-only mount is refused too;
- while writing, ``plan.written`` is what is on disk, so Ctrl-C or a full disk gives an honest message.
Every file is written atomically (temp file, then rename; what ITK wrote is read back before the rename).
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Iterator, Sequence

from ..errors import Cancelled, InputError, Interrupted, KneeSegError
from ..files import TEMP_PREFIX
from ..segment.io import IMAGE_SUFFIXES

SEG_SUFFIX = ".seg.nrrd"
PREVIEW_SUFFIX = ".png"


class OutputError(KneeSegError):
    """An output cannot or must not be written (would replace an input, exists, not writable)."""


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _companions(path: Path) -> list[Path]:
    """The files a detached header names beside it (an input .nhdr/.mhd reads a .raw/.nrrd data file)."""
    name = path.name.lower()
    if name.endswith((".nhdr", ".mhd")):
        stem = path.name[: -5] if name.endswith(".nhdr") else path.name[: -4]
        return [path.with_name(stem + ext) for ext in (".raw", ".raw.gz", ".zraw", ".img")]
    return []


def check_writable_folder(folder: Path, what: str) -> None:
    """Refuses ``folder`` (which may not exist yet) unless it can be created and a file written into it."""
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise OutputError(f"{what}: cannot create folder {folder}: {existing} is a file")
    try:
        fd, probe = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}probe-", dir=existing)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise OutputError(f"{what}: cannot write in {existing} ({e.strerror or e})") from None


@dataclass
class OutputPlan:
    inputs: Sequence[Path] = ()
    force: bool = False
    outputs: list[tuple[Path, str]] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)

    def add(self, path: Path | None, what: str) -> None:
        if path is not None:
            self.outputs.append((Path(path), what))

    def check(self) -> None:
        """Every rule of the module docstring, for every output, before anything is computed."""
        inputs = [Path(p) for p in self.inputs]
        inputs += [c for p in inputs for c in _companions(p)]
        seen: dict[str, str] = {}
        for path, what in self.outputs:
            key = os.path.abspath(path)
            if key in seen:
                raise OutputError(f"{what} and {seen[key]} are the same file {path}")
            seen[key] = what
            for source in inputs:
                if os.path.abspath(source) == key or _same_file(source, path):
                    raise OutputError(f"{what}: {path} is an input of this run; it is never overwritten")
            if path.is_dir():
                raise OutputError(f"{what}: {path} is an existing folder; give a file name")
            if path.exists() and not self.force:
                raise OutputError(f"{what}: {path} exists; pass --force to replace it")
            check_writable_folder(path.parent, what)

    @contextmanager
    def writing(self) -> Iterator["OutputPlan"]:
        """The write stage: call ``done(path)`` after each output. Ctrl-C (or SIGTERM) inside raises
        ``Interrupted`` saying what is on disk and what is not; an OSError names the output and what was
        written before it."""
        try:
            yield self
        except KeyboardInterrupt:
            raise Interrupted(self.interrupted_message()) from None
        except OSError as e:
            pending = next((p for p, _ in self.outputs if p not in self.written), None)
            where = e.filename or pending or ""
            raise OutputError(f"could not write {where}: {e.strerror or e}; {self.written_note()}") from None
        except Cancelled:
            raise
        except KneeSegError as e:
            raise OutputError(f"{e}; {self.written_note()}") from None

    def written_note(self) -> str:
        return f"written: {', '.join(map(str, self.written))}" if self.written else "nothing was written"

    def done(self, *paths: Path) -> None:
        self.written += [Path(p) for p in paths]

    def interrupted_message(self) -> str:
        pending = [p for p, _ in self.outputs if p not in self.written]
        done = self.written_note()
        if pending:
            done += f"; not written: {', '.join(map(str, pending))}"
        return done


def _check_image_suffix(path: Path, what: str) -> None:
    if not path.name.lower().endswith(IMAGE_SUFFIXES) or path.name.lower().endswith(SEG_SUFFIX):
        raise InputError(f"{path.name}: the {what} must be an image file ({', '.join(IMAGE_SUFFIXES)})")


# What each output is called in messages (the option that names it).
WHAT = {"seg": "the segmentation (-o)", "labelmap": "the labelmap (--labelmap)",
        "uncertainty": "the uncertainty (--uncertainty)", "preview": "the preview (--preview)",
        "statistics": "the statistics (--statistics)", "dicom_seg": "the DICOM SEG (--dicom-seg)"}


@dataclass
class Outputs:
    seg: Path | None = None
    labelmap: Path | None = None
    uncertainty: Path | None = None
    preview: Path | None = None
    statistics: Path | None = None
    dicom_seg: Path | None = None

    def named(self) -> list[tuple[Path, str]]:
        """(path, what) of every requested file, the label table beside a labelmap included."""
        out = []
        for f in fields(self):
            path = getattr(self, f.name)
            if path is not None:
                out.append((Path(path), WHAT[f.name]))
                if f.name == "labelmap":
                    from .labeltable import label_table_paths

                    out += [(p, f"the label table of {WHAT[f.name]}") for p in label_table_paths(path)]
        return out

    def paths(self) -> list[Path]:
        return [p for p, _ in self.named()]

    def check(self, image_path: Path | None = None, force: bool = False) -> OutputPlan:
        """Refuses, before any work, outputs that could not or must not be written as asked; returns the plan
        that ``write`` accounts in."""
        if not any(getattr(self, f.name) is not None for f in fields(self)):
            raise InputError("nothing to write: give -o OUT.seg.nrrd, --labelmap, --statistics or --dicom-seg")
        if self.seg is not None and not self.seg.name.endswith(SEG_SUFFIX):
            raise InputError(f"{self.seg.name}: the segmentation output must end with {SEG_SUFFIX}")
        if self.labelmap is not None:
            _check_image_suffix(self.labelmap, "labelmap")
        if self.uncertainty is not None:
            _check_image_suffix(self.uncertainty, "uncertainty map")
        if self.preview is not None and not self.preview.name.lower().endswith(PREVIEW_SUFFIX):
            raise InputError(f"{self.preview.name}: the preview is a .png")
        if self.statistics is not None:
            from .statistics import check_statistics_path

            check_statistics_path(self.statistics)
        if self.dicom_seg is not None:
            from .dicomseg import check_dicom_seg

            check_dicom_seg(Path(image_path) if image_path is not None else Path(""), self.dicom_seg)
        plan = OutputPlan(inputs=[Path(image_path)] if image_path is not None else [], force=force)
        for path, what in self.named():
            plan.add(path, what)
        plan.check()
        return plan

    def write(self, plan: OutputPlan, image, image_path: Path | None, echo: int | None, result,
              title: str = "") -> list[Path]:
        """Writes every requested output of ``result`` (a ``pipeline.SegmentationResult``) for ``image``,
        each accounted in ``plan`` (checked by ``check``); returns what was written."""
        tag = result.model.tag
        with plan.writing():  # Ctrl-C or a full disk here says truthfully what was written
            if self.seg is not None:
                from .segfile import write_seg_nrrd

                plan.done(write_seg_nrrd(result.labelmap, self.seg, model_tag=tag, laterality=result.laterality))
            if self.labelmap is not None:
                from ..segment import io
                from .labeltable import write_label_table

                plan.done(io.write_image(result.labelmap, self.labelmap))
                plan.done(*write_label_table(self.labelmap, result.laterality))
            if self.uncertainty is not None and result.uncertainty is not None:
                from ..segment import io

                plan.done(io.write_image(result.uncertainty, self.uncertainty))
            if self.statistics is not None:
                from .statistics import segment_statistics, write_statistics

                stats = segment_statistics(image, result.labelmap, result.laterality, tag)
                plan.done(write_statistics(stats, self.statistics))
            if self.dicom_seg is not None:
                from .dicomseg import write_dicom_seg

                plan.done(write_dicom_seg(result.labelmap, Path(image_path), echo, self.dicom_seg, tag,
                                          result.laterality))
            if self.preview is not None:
                from .preview import write_preview

                plan.done(write_preview(image, result.labelmap, result.joint_center_lps, self.preview, title=title))
        return list(plan.written)
