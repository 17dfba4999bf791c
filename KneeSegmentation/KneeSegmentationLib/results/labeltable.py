"""A labelmap's label table beside it: names, colours and SNOMED codes, for other tools and for Slicer.

``knee.nii.gz`` gets ``knee.labels.json`` (label → name, colour, codes; read by scripts) and ``knee.ctbl``
(Slicer's colour table text format: ``label name R G B A`` with 0..255 colours; Slicer loads it with the
labelmap and shows the names).

    write_label_table("out/knee.nii.gz", laterality="left")   # -> [out/knee.labels.json, out/knee.ctbl]
"""
from __future__ import annotations

import json
from pathlib import Path

from ..constants import BONES, SNOMED_SCHEME
from ..files import write_text_atomically
from ..segment.io import IMAGE_SUFFIXES

LABELS_SUFFIX = ".labels.json"
CTBL_SUFFIX = ".ctbl"


def stem_of(path: Path) -> str:
    """``knee`` for knee.nii.gz, knee.nrrd, knee.mha ..."""
    name = path.name
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def label_table_paths(labelmap_path: str | Path) -> tuple[Path, Path]:
    labelmap_path = Path(labelmap_path)
    stem = stem_of(labelmap_path)
    return labelmap_path.with_name(stem + LABELS_SUFFIX), labelmap_path.with_name(stem + CTBL_SUFFIX)


def label_table(laterality: str | None = None) -> dict:
    return {"background": 0, "laterality": laterality, "labels": [
        {"label": b.label, "name": b.name, "color": [round(c * 255) for c in b.color],
         "category": {"scheme": SNOMED_SCHEME, "code": "123037004", "meaning": "Anatomical Structure"},
         "type": {"scheme": SNOMED_SCHEME, "code": b.snomed_code, "meaning": b.snomed_meaning}} for b in BONES]}


def ctbl_text() -> str:
    lines = ["# Color table file written by KneeSegmentation", f"# {len(BONES) + 1} values", "0 Background 0 0 0 0"]
    lines += [f"{b.label} {b.name} " + " ".join(str(round(c * 255)) for c in b.color) + " 255" for b in BONES]
    return "\n".join(lines) + "\n"


def write_label_table(labelmap_path: str | Path, laterality: str | None = None) -> list[Path]:
    json_path, ctbl_path = label_table_paths(labelmap_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    return [write_text_atomically(json_path, json.dumps(label_table(laterality), indent=2) + "\n"),
            write_text_atomically(ctbl_path, ctbl_text())]
