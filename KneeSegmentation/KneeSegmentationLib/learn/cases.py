"""Training cases: an image and its corrected labelmap, saved so that the trainer can fine-tune on them.

A case is a folder ``<dataset>/<YYYYMMDD-HHMMSS>-<hash>/`` holding ``image.nrrd`` (the image as segmented),
``label.nrrd`` (uint8: 0 background, 1 femur, 2 tibia, 3 fibula, on the image's grid) and ``case.json``
(where it came from, which model produced the first result, and how much the user edited it: per-bone Dice
between the model's output and the correction). This is the format ``trainer/cases.py`` reads.

A case is assembled in a hidden temporary folder of the dataset and renamed into place, so a reader (or the
trainer) never sees half a case, and an existing case is never written again. Inputs that would teach the
model something wrong are refused before anything is written: an image and labelmap on different grids, an
empty correction, label values other than 0–3, or a case that is already in the dataset.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..constants import BONES, NUM_CLASSES
from ..errors import DatasetError, InputError
from ..files import TEMP_PREFIX, remove_stale_temps, usual_permissions
from ..metrics import dice
from ..paths import training_cases_dir

CASE_FORMAT = "kneeseg-case/1"
IMAGE_FILE, LABEL_FILE, META_FILE = "image.nrrd", "label.nrrd", "case.json"
GEOMETRY_RTOL = 1e-4  # relative tolerance on spacing, origin (scaled by the spacing) and direction
HASH_CHARS = 8


@dataclass(frozen=True)
class CaseInfo:
    """A saved case as listed for the panel and the CLI (read from its ``case.json``)."""

    id: str
    path: Path
    created: str
    source: str
    model: str | None
    edit_dice: dict[str, float] | None
    voxels: dict[str, int]


# --------------------------------------------------------------------------------------------- checks
def geometry_of(image: sitk.Image) -> dict:
    return {"size": list(image.GetSize()), "spacing": list(image.GetSpacing()),
            "origin": list(image.GetOrigin()), "direction": list(image.GetDirection())}


def geometry_mismatch(a: sitk.Image, b: sitk.Image) -> str | None:
    """Why ``a`` and ``b`` are not on the same voxel grid, or None if they are."""
    if a.GetDimension() != b.GetDimension() or a.GetSize() != b.GetSize():
        return f"size {a.GetSize()} vs {b.GetSize()}"
    spacing_a, spacing_b = np.array(a.GetSpacing()), np.array(b.GetSpacing())
    if not np.allclose(spacing_a, spacing_b, rtol=GEOMETRY_RTOL, atol=0):
        return f"spacing {tuple(spacing_a)} vs {tuple(spacing_b)} mm"
    if not np.allclose(a.GetOrigin(), b.GetOrigin(), rtol=0, atol=GEOMETRY_RTOL * 10 * float(spacing_a.max())):
        return f"origin {a.GetOrigin()} vs {b.GetOrigin()} mm"
    if not np.allclose(a.GetDirection(), b.GetDirection(), rtol=0, atol=GEOMETRY_RTOL):
        return "direction (orientation) differs"
    return None


def _label_array(labelmap: sitk.Image, what: str) -> np.ndarray:
    if labelmap.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"the {what} must be a scalar labelmap, not a {labelmap.GetNumberOfComponentsPerPixel()}-"
                         "component image")
    array = sitk.GetArrayFromImage(labelmap)
    if not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise InputError(f"the {what} holds non-integer values; expected labels 0–{NUM_CLASSES - 1}")
    values = np.unique(array)
    bad = [v for v in values.tolist() if v < 0 or v >= NUM_CLASSES]
    if bad:
        raise InputError(f"the {what} holds label values {bad[:10]} outside 0–{NUM_CLASSES - 1} "
                         "(0 background, 1 Femur, 2 Tibia, 3 Fibula, 4 Patella)")
    return array.astype(np.uint8)


def check_case(image: sitk.Image, corrected: sitk.Image,
               original: sitk.Image | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Refuses a case the trainer must not learn from; returns the corrected (and original) labels as uint8."""
    if image.GetDimension() != 3 or corrected.GetDimension() != 3:
        raise InputError("a training case needs a 3D image and a 3D labelmap")
    why = geometry_mismatch(image, corrected)
    if why:
        raise InputError(f"the corrected labelmap is not on the image's grid ({why}); export the segmentation "
                         "with the image as reference geometry")
    labels = _label_array(corrected, "corrected labelmap")
    if not labels.any():
        raise InputError("the corrected segmentation is empty (no bone voxel); nothing to learn")
    if original is None:
        return labels, None
    why = geometry_mismatch(image, original)
    if why:
        raise InputError(f"the model's original labelmap is not on the image's grid ({why})")
    return labels, _label_array(original, "original (model) labelmap")


# ------------------------------------------------------------------------------------------- summary
def edit_dice(original: np.ndarray, corrected: np.ndarray) -> dict[str, float]:
    """Per-bone Dice between the model's output and the correction: 1.0 = untouched."""
    return {b.name: round(dice(original == b.label, corrected == b.label), 6) for b in BONES}


def voxel_counts(labels: np.ndarray) -> dict[str, int]:
    return {b.name: int(np.count_nonzero(labels == b.label)) for b in BONES}


def _content_hash(image: sitk.Image, labels: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(geometry_of(image)).encode())
    h.update(np.ascontiguousarray(sitk.GetArrayViewFromImage(image)).tobytes())
    h.update(labels.tobytes())
    return h.hexdigest()


def case_metadata(image: sitk.Image, labels: np.ndarray, original: np.ndarray | None, source: str,
                  model_tag: str | None, case_id: str, content_sha256: str) -> dict:
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
    meta = {
        "format": CASE_FORMAT,
        "id": case_id,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": source,
        "model": model_tag,
        "voxels": voxel_counts(labels),
        "volume_ml": {k: round(v * voxel_ml, 3) for k, v in voxel_counts(labels).items()},
        "geometry": geometry_of(image),
        "image_pixel_type": image.GetPixelIDTypeAsString(),
        "content_sha256": content_sha256,
        "edit": None,
    }
    if original is not None:
        changed = int(np.count_nonzero(original != labels))
        union = int(np.count_nonzero((original > 0) | (labels > 0)))
        meta["edit"] = {
            "dice": edit_dice(original, labels),  # model output vs correction, per bone
            "original_voxels": voxel_counts(original),
            "changed_voxels": changed,
            "changed_fraction_of_bone": round(changed / union, 6) if union else 0.0,
        }
    return meta


# ---------------------------------------------------------------------------------------------- save
def _existing_hashes(dataset_dir: Path) -> dict[str, str]:
    out = {}
    for info_path in dataset_dir.glob(f"*/{META_FILE}"):
        if info_path.parent.name.startswith("."):
            continue
        try:
            digest = json.loads(info_path.read_text(encoding="utf-8")).get("content_sha256")
        except (OSError, ValueError, AttributeError):
            continue
        if digest:
            out[digest] = info_path.parent.name
    return out


def save_training_case(image: sitk.Image, corrected: sitk.Image, dataset_dir: Path | str | None = None,
                       original: sitk.Image | None = None, source: str = "", model_tag: str | None = None) -> Path:
    """Writes a NEW case folder into ``dataset_dir`` (default: ``paths.training_cases_dir()``) and returns it.

    ``corrected`` is the user's labelmap on ``image``'s grid; ``original`` the model's first result, used only
    to record how much was edited. Raises ``InputError`` for a case that must not be learnt from and
    ``DatasetError`` if the same image and labels are saved already.
    """
    labels, original_labels = check_case(image, corrected, original)
    dataset_dir = Path(dataset_dir) if dataset_dir is not None else training_cases_dir()
    prepare_dataset_dir(dataset_dir)
    digest = _content_hash(image, labels)
    # The claim: one atomic mkdir per content. Of two identical saves at once, one claims, the other is told
    # the case is being saved; check and write are then one step (no duplicate can appear in between).
    claim = dataset_dir / f"{TEMP_PREFIX}claim-{digest[:32]}"
    remove_stale_temps(dataset_dir)
    try:
        claim.mkdir()
    except FileExistsError:
        raise DatasetError(f"this image with this correction is being saved right now in {dataset_dir} "
                           "(by another process); it is saved once") from None
    try:
        twin = _existing_hashes(dataset_dir).get(digest)
        if twin:
            raise DatasetError(f"this image with this correction is saved already as case {twin} in {dataset_dir}")
        return _write_case(image, labels, original_labels, dataset_dir, digest, source, model_tag)
    finally:
        shutil.rmtree(claim, ignore_errors=True)


def prepare_dataset_dir(dataset_dir: Path) -> None:
    """Creates ``dataset_dir`` if needed; refuses a file, or a folder we cannot write in, with one line."""
    if dataset_dir.exists() and not dataset_dir.is_dir():
        raise DatasetError(f"{dataset_dir} is a file, not a dataset folder")
    try:
        dataset_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}probe-", dir=dataset_dir)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise DatasetError(f"cannot write cases in {dataset_dir} ({e.strerror or e})") from None


def _write_case(image: sitk.Image, labels: np.ndarray, original_labels: np.ndarray | None, dataset_dir: Path,
                digest: str, source: str, model_tag: str | None) -> Path:
    label_image = sitk.GetImageFromArray(labels)
    label_image.CopyInformation(image)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    tmp = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}case-", dir=dataset_dir))
    try:
        sitk.WriteImage(image, str(tmp / IMAGE_FILE), True)
        sitk.WriteImage(label_image, str(tmp / LABEL_FILE), True)
        for attempt in range(100):
            case_id = f"{stamp}-{digest[:HASH_CHARS]}" + (f"-{attempt + 1}" if attempt else "")
            final = dataset_dir / case_id
            if final.exists():
                continue
            meta = case_metadata(image, labels, original_labels, source, model_tag, case_id, digest)
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
            usual_permissions(tmp)
            try:
                os.rename(tmp, final)  # atomic; never replaces a non-empty folder
            except OSError:
                continue  # another writer took the name in between
            return final
        raise DatasetError(f"could not find a free case name in {dataset_dir}")
    except RuntimeError as e:  # ITK's writer: disk full, permissions
        raise DatasetError(f"could not write the case in {dataset_dir}: {str(e).strip().splitlines()[-1]}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- list
def read_case_info(folder: Path) -> CaseInfo:
    meta_path = Path(folder) / META_FILE
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DatasetError(f"case {Path(folder).name}: {META_FILE} is missing or malformed ({e})") from e
    if not isinstance(meta, dict):
        raise DatasetError(f"case {Path(folder).name}: {META_FILE} must hold a JSON object")
    edit = meta.get("edit") or {}
    return CaseInfo(id=str(meta.get("id", Path(folder).name)), path=Path(folder), created=str(meta.get("created", "")),
                    source=str(meta.get("source", "")), model=meta.get("model"), edit_dice=edit.get("dice"),
                    voxels=dict(meta.get("voxels", {})))


def list_cases(dataset_dir: Path | str | None = None) -> list[CaseInfo]:
    """The complete cases of a dataset folder, oldest first (hidden and temporary folders are skipped;
    a folder without a readable ``case.json`` is skipped too: the trainer would refuse it with a reason)."""
    dataset_dir = Path(dataset_dir) if dataset_dir is not None else training_cases_dir()
    if not dataset_dir.is_dir():
        return []
    out = []
    for folder in sorted(p for p in dataset_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not all((folder / f).is_file() for f in (IMAGE_FILE, LABEL_FILE, META_FILE)):
            continue
        try:
            out.append(read_case_info(folder))
        except DatasetError:
            continue
    return out
