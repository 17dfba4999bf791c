"""Slicer's serialized terminology strings for the bones, written without Slicer, with the knee's laterality.

Slicer keeps a segment's terminology in its ``TerminologyEntry`` tag as seven ``~``-separated fields:
context name, category, type, type modifier, anatomic context name, anatomic region, anatomic-region modifier;
each code is ``scheme^value^meaning``. ``segments.terminology_entry`` builds the same string through
slicer-core's own serializer (the tests compare both). Laterality is recorded as the anatomic-region
modifier (region Knee, modifier Left or Right), as issue #12 asks; the DICOM SEG carries the same codes.

    terminology_string(FEMUR)            # '...~SCT^71341001^Femur~^^~~^^~^^'
    terminology_string(FEMUR, "left")    # '...~Anatomic codes - DICOM master list~SCT^72696002^Knee~SCT^7771000^Left'
"""
from __future__ import annotations

from ..constants import CATEGORY_CODE, CATEGORY_MEANING, SNOMED_SCHEME, TERMINOLOGY_CONTEXT, Bone

ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
KNEE_CODE, KNEE_MEANING = "72696002", "Knee"
# SNOMED CT laterality qualifiers (DICOM CID 244).
LATERALITY_CODES: dict[str, tuple[str, str]] = {"left": ("7771000", "Left"), "right": ("24028007", "Right")}


def _code(value: str = "", meaning: str = "", scheme: str = SNOMED_SCHEME) -> str:
    return f"{scheme}^{value}^{meaning}" if value else "^^"


def terminology_string(bone: Bone, laterality: str | None = None) -> str:
    """The ``TerminologyEntry`` tag value of ``bone``; ``laterality`` is "left", "right" or None (unknown)."""
    fields = [TERMINOLOGY_CONTEXT, _code(CATEGORY_CODE, CATEGORY_MEANING), _code(bone.snomed_code, bone.snomed_meaning),
              _code()]
    if laterality is None:
        fields += ["", _code(), _code()]
    else:
        if laterality not in LATERALITY_CODES:
            raise ValueError(f"laterality must be 'left', 'right' or None, not {laterality!r}")
        fields += [ANATOMIC_CONTEXT, _code(KNEE_CODE, KNEE_MEANING), _code(*LATERALITY_CODES[laterality])]
    return "~".join(fields)
