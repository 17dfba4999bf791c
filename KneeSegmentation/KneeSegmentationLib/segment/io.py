"""Reading and writing images with their geometry, and refusing images that cannot be segmented.

``read_image`` accepts NRRD, NIfTI (.nii, .nii.gz), MetaImage (.mha, .mhd) and DICOM series (a folder or any
one file of the series) and returns a validated 3D float32 ``sitk.Image`` in LPS with origin, spacing and
direction (oblique too) as stored. A multi-echo DICOM series (several images per position, told apart by
EchoTime 0018|0081) is split by echo time; ``echo`` picks one by index, default the first (shortest TE).

    image = read_image("MESE_T2_dicom_data_anon", echo=2)
    list_echoes("MESE_T2_dicom_data_anon")   # [6.312, 12.624, ...] ms

Why our own echo split: GDCM gives one series ID for all echoes of a GE multi-echo acquisition; read as one
series, the slices of different echoes interleave at the same positions and the geometry is garbage.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..files import TEMP_PREFIX, remove_stale_temps, usual_permissions
from ..limits import check_direction, check_input_size, check_spacing

IMAGE_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
ECHO_TIME_TAG = "0018|0081"
POSITION_TAG = "0020|0032"
ORIENTATION_TAG = "0020|0037"
ECHO_DECIMALS = 3  # echo times equal to 1 µs are the same echo
SLICE_GAP_TOLERANCE = 0.1  # relative variation of the slice step tolerated in a DICOM series


# ----------------------------------------------------------------------------------------------- reading

def read_image(path: str | os.PathLike, echo: int | None = None) -> sitk.Image:
    """Reads ``path`` (image file, DICOM folder or DICOM file) as a validated 3D float32 image."""
    path = Path(path)
    check_readable(path)
    if path.is_dir() or not _has_image_suffix(path):
        image = _read_dicom(path, echo)
    else:
        if echo not in (None, 0):
            raise InputError(f"{path.name} holds a single image; echo {echo} does not exist (only echo 0).")
        image = _read_file(path)
    validate_image(image, name=path.name)
    return _to_float32(image)


def echo_time_of(image: sitk.Image) -> float | None:
    """The echo time (ms) ``read_image`` recorded on an image read from a DICOM series, if any."""
    return float(image.GetMetaData(ECHO_TIME_TAG)) if image.HasMetaDataKey(ECHO_TIME_TAG) else None


def list_echoes(path: str | os.PathLike) -> list[float]:
    """Echo times (ms, ascending) of the DICOM series at ``path``; empty if its files carry no EchoTime, and
    for an image file (NRRD, NIfTI, MetaImage), which holds one echo."""
    path = Path(path)
    if path.is_file() and _has_image_suffix(path):
        return []
    return [group.echo_time for group in _echo_groups(path) if group.echo_time is not None]


def _has_image_suffix(path: Path) -> bool:
    return path.name.lower().endswith(IMAGE_SUFFIXES)


def check_readable(path: Path) -> None:
    """Refuses a path that is missing or that we may not read, saying which of the two it is."""
    try:
        os.stat(path)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file or folder.") from None
    except OSError as e:
        raise InputError(f"{path}: cannot be read ({e.strerror or e}).") from None
    if not os.access(path, os.R_OK | (os.X_OK if path.is_dir() else 0)):
        raise InputError(f"{path}: cannot be read (permission denied).")
    if path.is_dir():
        try:
            os.listdir(path)
        except OSError as e:
            raise InputError(f"{path}: the folder cannot be read ({e.strerror or e}).") from None
    else:
        try:
            with open(path, "rb"):
                pass
        except OSError as e:
            raise InputError(f"{path}: cannot be read ({e.strerror or e}).") from None


COMPLEX_PIXELS = (sitk.sitkComplexFloat32, sitk.sitkComplexFloat64)


def check_pixel_kind(pixel_id: int, components: int, name: str) -> None:
    """A real-valued scalar image, as a file's header declares it or as an image in memory has it."""
    if pixel_id in COMPLEX_PIXELS:
        raise InputError(f"{name} holds complex voxels (k-space or phase data); a real-valued magnitude MRI is "
                         "needed.")
    if components > 1:
        raise InputError(f"{name} has {components} components per voxel "
                         "(vector or colour image); a scalar 3D MRI is needed.")


def check_header(reader: sitk.ImageFileReader, name: str) -> None:
    """What the header declares, checked before any pixel is read: kind of pixel, size, spacing, direction."""
    check_pixel_kind(reader.GetPixelID(), reader.GetNumberOfComponents(), name)
    check_input_size(reader.GetSize(), name)
    if reader.GetDimension() == 3:
        check_spacing(reader.GetSpacing(), name)
        check_direction(reader.GetDirection(), name)


def header_reader(path: str | os.PathLike, failure: str, private_tags: bool = True) -> sitk.ImageFileReader:
    """A reader holding the header of ``path`` and no voxels (sizes are checked before anything is allocated);
    an unreadable file is an ``InputError``: "<file name> <failure>: <ITK's first line>"."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    if not private_tags:
        reader.LoadPrivateTagsOff()
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise InputError(f"{Path(path).name} {failure}: {_first_line(error)}") from None
    return reader


def _read_file(path: Path) -> sitk.Image:
    reader = header_reader(path, "could not be read as an image")
    check_header(reader, path.name)
    try:
        return reader.Execute()
    except RuntimeError as error:
        raise InputError(f"{path.name} could not be read as an image: {_first_line(error)}") from None


def _to_float32(image: sitk.Image) -> sitk.Image:
    """Float32 copy keeping the metadata (sitk.Cast drops it)."""
    if image.GetPixelID() == sitk.sitkFloat32:
        return image
    cast = sitk.Cast(image, sitk.sitkFloat32)
    for key in image.GetMetaDataKeys():
        cast.SetMetaData(key, image.GetMetaData(key))
    return cast


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


# ----------------------------------------------------------------------------------------------- DICOM

@dataclass
class _Slice:
    file: str
    echo_time: float | None
    position: np.ndarray  # ImagePositionPatient, LPS mm
    normal: np.ndarray  # slice normal from ImageOrientationPatient


@dataclass
class _EchoGroup:
    echo_time: float | None
    slices: list[_Slice]


NOT_DICOM = "is not a readable DICOM file"


def _read_dicom(path: Path, echo: int | None) -> sitk.Image:
    groups = _echo_groups(path)
    index = 0 if echo is None else echo
    if not 0 <= index < len(groups):
        raise InputError(f"Echo {echo} does not exist in {path.name}; available echoes: {_describe(groups)}.")
    group = groups[index]
    files = [s.file for s in group.slices]
    first = header_reader(files[0], NOT_DICOM)
    if first.GetPixelID() in COMPLEX_PIXELS:
        raise InputError(f"The DICOM series in {path.name} holds complex voxels; a magnitude image is needed.")
    check_input_size((*first.GetSize()[:2], len(files)), f"The DICOM series in {path.name}")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    warnings_shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK's "non uniform sampling" note: we checked the steps
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise InputError(f"The DICOM series in {path.name} could not be read: {_first_line(error)}") from None
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings_shown)
    if group.echo_time is not None:
        image.SetMetaData(ECHO_TIME_TAG, f"{group.echo_time:g}")
    return image


def _describe(groups: list[_EchoGroup]) -> str:
    return ", ".join(f"{i} (TE {g.echo_time:g} ms)" if g.echo_time is not None else f"{i}"
                     for i, g in enumerate(groups))


def _series_files(path: Path) -> list[str]:
    """File names of the one DICOM series at ``path`` (a folder holding one series, or a file of a series)."""
    folder = path if path.is_dir() else path.parent
    check_readable(folder)
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    by_id = {sid: sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid) for sid in series}
    if not path.is_dir():
        target = os.path.realpath(path)
        chosen = [files for files in by_id.values() if target in {os.path.realpath(f) for f in files}]
        if not chosen:
            raise InputError(f"{path.name} is neither a supported image file ({', '.join(IMAGE_SUFFIXES)}) "
                             "nor part of a readable DICOM series.")
        return list(chosen[0])
    if not by_id:
        raise InputError(f"The folder {path.name} holds no DICOM series.")
    if len(by_id) > 1:
        listing = "; ".join(f"{sid} ({len(files)} files)" for sid, files in by_id.items())
        raise InputError(f"The folder {path.name} holds {len(by_id)} DICOM series ({listing}); "
                         "pass one file of the series you want instead of the folder.")
    return list(next(iter(by_id.values())))


def _read_slice_header(file: str) -> _Slice:
    reader = header_reader(file, NOT_DICOM, private_tags=False)

    def numbers(tag: str) -> list[float] | None:
        if not reader.HasMetaDataKey(tag):
            return None
        try:
            return [float(v) for v in reader.GetMetaData(tag).strip().split("\\") if v.strip()]
        except ValueError:
            return None

    echo = numbers(ECHO_TIME_TAG)
    position = numbers(POSITION_TAG)
    cosines = numbers(ORIENTATION_TAG)
    if position is None or len(position) != 3 or cosines is None or len(cosines) != 6:
        position, normal = [0.0, 0.0, 0.0], np.zeros(3)  # no geometry: order by file name
    else:
        normal = np.cross(cosines[:3], cosines[3:])
    return _Slice(file, round(echo[0], ECHO_DECIMALS) if echo else None, np.asarray(position), normal)


def _echo_groups(path: Path) -> list[_EchoGroup]:
    """The series' slices grouped by echo time (ascending), each group sorted along the slice normal."""
    if not path.exists():
        raise InputError(f"{path}: no such file or folder.")
    slices = [_read_slice_header(f) for f in _series_files(path)]
    by_echo: dict[float | None, list[_Slice]] = {}
    for s in slices:
        by_echo.setdefault(s.echo_time, []).append(s)
    keys = sorted(by_echo, key=lambda te: (te is None, te if te is not None else 0.0))
    groups = [_EchoGroup(te, _sorted_geometrically(by_echo[te])) for te in keys]
    for group in groups:
        _check_slice_steps(group, path)
    return groups


def _sorted_geometrically(slices: list[_Slice]) -> list[_Slice]:
    normal = slices[0].normal
    if not np.any(normal):
        return sorted(slices, key=lambda s: s.file)
    return sorted(slices, key=lambda s: float(np.dot(s.position, normal)))


def _check_slice_steps(group: _EchoGroup, path: Path) -> None:
    """Refuses duplicate positions or uneven slice steps: read as one volume, they would corrupt geometry."""
    if len(group.slices) < 2 or not np.any(group.slices[0].normal):
        return
    depth = np.array([np.dot(s.position, group.slices[0].normal) for s in group.slices])
    steps = np.diff(depth)
    label = f"echo TE {group.echo_time:g} ms" if group.echo_time is not None else "the series"
    if np.any(np.abs(steps) < 1e-3):
        raise InputError(f"{path.name}: {label} has several slices at the same position; the series mixes "
                         "acquisitions that cannot be told apart by EchoTime.")
    if np.ptp(steps) > SLICE_GAP_TOLERANCE * np.median(steps):
        raise InputError(f"{path.name}: {label} has uneven slice spacing ({steps.min():.3g}–{steps.max():.3g} mm); "
                         "missing slices?")


# ----------------------------------------------------------------------------------------------- validation

def validate_image(image: sitk.Image, name: str = "The image") -> None:
    """Raises InputError naming the problem if ``image`` cannot be segmented; returns None if it can."""
    dim = image.GetDimension()
    check_pixel_kind(image.GetPixelID(), image.GetNumberOfComponentsPerPixel(), name)
    if dim != 3:
        kind = "2D" if dim == 2 else f"{dim}D"
        raise InputError(f"{name} is {kind} (size {list(image.GetSize())}); a 3D volume is needed"
                         + (" (pick one volume of a 4D series)." if dim > 3 else "."))
    size = image.GetSize()
    if 0 in size:
        raise InputError(f"{name} is empty (size {list(size)}).")
    if 1 in size:
        raise InputError(f"{name} is a single slice (size {list(size)}), i.e. 2D; a 3D volume is needed.")
    check_input_size(size, name)
    check_spacing(image.GetSpacing(), name)
    check_direction(image.GetDirection(), name)
    _check_values(sitk.GetArrayViewFromImage(image), name)


def _check_values(array: np.ndarray, name: str) -> None:
    if np.issubdtype(array.dtype, np.floating):
        finite = np.isfinite(array)
        bad = array.size - int(np.count_nonzero(finite))
        if bad == array.size:
            raise InputError(f"{name} is entirely NaN/infinite; there is nothing to segment.")
        if bad:
            raise InputError(f"{name} has {bad} NaN or infinite voxels out of {array.size}; "
                             "fix or mask them before segmenting.")
    low, high = array.min(), array.max()
    if low == high:
        raise InputError(f"{name} is constant (every voxel is {low.item():g}); there is nothing to segment.")


# ----------------------------------------------------------------------------------------------- writing

def write_image(image: sitk.Image, path: str | os.PathLike, compress: bool = True) -> Path:
    """Writes ``image`` atomically: into a temporary folder beside ``path``, then renamed into place.

    Readers never see a half-written file; a detached header (.mhd, .nhdr) is moved after its data file.
    """
    path = Path(path)
    if not _has_image_suffix(path):
        raise InputError(f"Cannot write {path.name}: use one of {', '.join(IMAGE_SUFFIXES)}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f"{TEMP_PREFIX}{path.name}-"))
    try:
        try:
            sitk.WriteImage(image, str(tmp / path.name), compress)
        except RuntimeError as error:  # ITK says "could not write": disk full, file too large, I/O error
            raise InputError(f"could not write {path}: {_first_line(error)}") from None
        verify_written(tmp / path.name, path, image.GetSize())
        usual_permissions(tmp)
        produced = sorted(tmp.iterdir(), key=lambda p: p.name == path.name)  # header last
        for file in produced:
            os.replace(file, path.parent / file.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def verify_written(written: Path, final: Path, size=None) -> None:
    """Reads a file ITK just wrote back in full: its NRRD writer ignores failed writes (a full disk leaves a
    truncated file and no error), and a truncated result must never be renamed into place."""
    try:
        back = sitk.ReadImage(str(written))
    except RuntimeError as error:
        raise InputError(f"could not write {final}: the file came out unreadable ({_first_line(error)}); "
                         "is the disk full?") from None
    if size is not None and tuple(back.GetSize())[:len(size)] != tuple(size):
        raise InputError(f"could not write {final}: the file came out incomplete; is the disk full?")
