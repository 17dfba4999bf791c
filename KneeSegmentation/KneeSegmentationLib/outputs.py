"""The outputs of a run, checked before the work and accounted for after it.

    plan = OutputPlan(inputs=[image_path], force=args.force)
    plan.add(args.output, SEGMENTATION_SUFFIXES, "the segmentation (-o)")
    plan.add(args.preview, (".png",), "the preview (--preview)")
    plan.check()                     # before the run: suffixes, inputs, existing files, writable folders
    with plan.writing(path):         # after the run, one output at a time
        write_image(labelmap, path)
    plan.written                     # what is on disk now, for an honest message when interrupted

The rules (documented in the README's "Guarantees"):
- an output is never an input, nor another output of the same run;
- an existing file is replaced only with ``force``; an existing folder never;
- every output's suffix is one its writer supports, and its folder can be created and written to,
  which is tried (a temporary file is created and removed) rather than guessed from permission bits,
  so that root on a read-only mount is refused too.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from .errors import Cancelled, KneeSegError
from .files import TEMP_PREFIX

SEGMENTATION_SUFFIXES = (".seg.nrrd",)
IMAGE_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
PREVIEW_SUFFIXES = (".png",)


class OutputError(KneeSegError):
    """An output cannot or must not be written (bad suffix, would replace an input, exists, not writable)."""


class Interrupted(Cancelled):
    """Interrupted while writing: ``str()`` says what was written and what was not."""


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

    def add(self, path: Path | None, suffixes: Sequence[str], what: str) -> None:
        if path is None:
            return
        path = Path(path)
        if not path.name.lower().endswith(tuple(suffixes)):
            raise OutputError(f"{what}: {path.name} must end with {' or '.join(suffixes)}")
        self.outputs.append((path, what))

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

    def done(self, path: Path) -> None:
        self.written.append(Path(path))

    def interrupted_message(self) -> str:
        pending = [p for p, _ in self.outputs if p not in self.written]
        done = self.written_note()
        if pending:
            done += f"; not written: {', '.join(map(str, pending))}"
        return done
