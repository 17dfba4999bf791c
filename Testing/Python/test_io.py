"""Reading, writing and validation of images: geometry kept through every format, multi-echo DICOM split by
EchoTime (synthetic series written here, and the real GE series from the mskt sdist), bad inputs refused with a
message that names the problem."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from KneeSegmentationLib.errors import InputError
from KneeSegmentationLib.segment.io import echo_time_of, list_echoes, read_image, validate_image, write_image

FORMATS = [".nrrd", ".nii", ".nii.gz", ".mha", ".mhd"]


def oblique_direction(angle_deg: float = 20.0) -> tuple[float, ...]:
    """A right-handed rotation about an oblique axis, so no axis of the image is aligned with LPS."""
    axis = np.array([1.0, 2.0, 3.0]) / np.linalg.norm([1.0, 2.0, 3.0])
    a = np.deg2rad(angle_deg)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    r = np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k
    return tuple(r.ravel())


def make_image(dtype=np.int16) -> sitk.Image:
    rng = np.random.default_rng(0)
    image = sitk.GetImageFromArray(rng.integers(0, 1000, size=(7, 9, 11)).astype(dtype))  # z, y, x
    image.SetSpacing((0.3, 0.45, 4.0))
    image.SetOrigin((-12.5, 33.25, 101.0))
    image.SetDirection(oblique_direction())
    return image


@pytest.mark.parametrize("suffix", FORMATS)
def test_geometry_round_trip_each_format(tmp_path: Path, suffix: str) -> None:
    original = make_image()
    path = write_image(original, tmp_path / f"knee{suffix}")
    read = read_image(path)
    assert read.GetPixelID() == sitk.sitkFloat32
    assert read.GetSize() == original.GetSize()
    np.testing.assert_allclose(read.GetSpacing(), original.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(read.GetOrigin(), original.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(read.GetDirection(), original.GetDirection(), atol=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read), sitk.GetArrayFromImage(original))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"knee{suffix}"] + (["knee.zraw"] if suffix == ".mhd" else [])), "temporary files left behind"


def test_write_image_replaces_existing_file_atomically(tmp_path: Path) -> None:
    path = tmp_path / "labels.nrrd"
    write_image(sitk.Image([4, 4, 4], sitk.sitkUInt8), path)
    second = sitk.Image([4, 4, 4], sitk.sitkUInt8) + 3
    write_image(second, path)
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(path))).max() == 3
    assert [p.name for p in tmp_path.iterdir()] == ["labels.nrrd"]


def test_write_image_refuses_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="use one of"):
        write_image(make_image(), tmp_path / "knee.png")


# ----------------------------------------------------------------------------------------------- DICOM

ROW, COL = np.array([0.0, 0.8, 0.6]), np.array([1.0, 0.0, 0.0])  # oblique row/column cosines
NORMAL = np.cross(ROW, COL)
SLICE_STEP, PIXEL = 3.5, (0.5, 0.7)  # mm; PixelSpacing is (row spacing, column spacing)
FIRST = np.array([-20.0, 10.0, 5.0])


def write_multi_echo_series(folder: Path, echo_times: list[float], slices: int, rows=6, cols=5) -> None:
    """Writes a shuffled multi-echo MR series: pixel value = 100 * (echo index + 1) + slice index."""
    folder.mkdir()
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    items = [(e, s) for e in range(len(echo_times)) for s in range(slices)]
    random.Random(0).shuffle(items)  # file names and instance numbers say nothing about position
    for number, (e, s) in enumerate(items, start=1):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.PatientName, ds.PatientID = "MR", "Phantom^Echo", "0"
        ds.SeriesNumber, ds.InstanceNumber = 1, number
        ds.EchoTime = f"{echo_times[e]:g}"
        ds.ImageOrientationPatient = [f"{v:g}" for v in (*ROW, *COL)]
        ds.ImagePositionPatient = [f"{v:g}" for v in FIRST + s * SLICE_STEP * NORMAL]
        ds.PixelSpacing = [f"{PIXEL[0]:g}", f"{PIXEL[1]:g}"]
        ds.SliceThickness = "3"
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = np.full((rows, cols), 100 * (e + 1) + s, np.uint16).tobytes()
        ds.save_as(folder / f"IM{number:04d}", enforce_file_format=True)


WRITTEN_ECHOES = [30.0, 10.0, 20.0]  # written out of order: the reader sorts them


@pytest.fixture
def multi_echo(tmp_path: Path) -> Path:
    folder = tmp_path / "series"
    write_multi_echo_series(folder, WRITTEN_ECHOES, slices=5)
    return folder


def test_list_echoes_sorted(multi_echo: Path) -> None:
    assert list_echoes(multi_echo) == [10.0, 20.0, 30.0]


@pytest.mark.parametrize("echo", [None, 0, 1, 2])
def test_each_echo_is_one_geometrically_sorted_volume(multi_echo: Path, echo: int | None) -> None:
    image = read_image(multi_echo, echo=echo)
    index = echo or 0
    assert image.GetSize() == (5, 6, 5)
    assert echo_time_of(image) == [10.0, 20.0, 30.0][index]
    np.testing.assert_allclose(image.GetSpacing(), (PIXEL[1], PIXEL[0], SLICE_STEP), rtol=1e-5)
    np.testing.assert_allclose(image.GetOrigin(), FIRST, atol=1e-4)
    np.testing.assert_allclose(np.reshape(image.GetDirection(), (3, 3)), np.column_stack([ROW, COL, NORMAL]),
                               atol=1e-5)
    values = sitk.GetArrayViewFromImage(image)  # z, y, x
    written = WRITTEN_ECHOES.index(echo_time_of(image))
    np.testing.assert_array_equal(values[:, 0, 0], 100 * (written + 1) + np.arange(5))
    assert np.all(values == values[:, :1, :1])


def test_one_file_of_the_series_reads_the_series(multi_echo: Path) -> None:
    one = sorted(multi_echo.iterdir())[7]
    image = read_image(one, echo=2)
    assert image.GetSize() == (5, 6, 5) and echo_time_of(image) == 30.0


def test_echo_out_of_range_names_the_available_echoes(multi_echo: Path) -> None:
    with pytest.raises(InputError, match=r"Echo 3 does not exist.*0 \(TE 10 ms\), 1 \(TE 20 ms\), 2 \(TE 30 ms\)"):
        read_image(multi_echo, echo=3)


def test_folder_with_two_series_asks_for_one_file(tmp_path: Path) -> None:
    write_multi_echo_series(tmp_path / "a", [10.0], slices=3)
    write_multi_echo_series(tmp_path / "b", [10.0], slices=3)
    for file in (tmp_path / "b").iterdir():
        file.rename(tmp_path / "a" / f"b-{file.name}")
    with pytest.raises(InputError, match="2 DICOM series"):
        read_image(tmp_path / "a")
    assert read_image(next((tmp_path / "a").glob("b-*"))).GetSize() == (5, 6, 3)


def test_missing_slice_is_refused(multi_echo: Path) -> None:
    for file in multi_echo.iterdir():
        ds = pydicom.dcmread(file)
        if ds.EchoTime == 10 and ds.PixelData == np.full((6, 5), 202, np.uint16).tobytes():
            file.unlink()
    with pytest.raises(InputError, match="uneven slice spacing"):
        read_image(multi_echo)


def test_real_ge_multi_echo_series(mskt_dicom: Path) -> None:
    echoes = list_echoes(mskt_dicom)
    assert len(echoes) == 8
    np.testing.assert_allclose(echoes, 6.312 * np.arange(1, 9), atol=1e-3)
    means = []
    first = read_image(mskt_dicom)
    for index in (0, 3, 7):
        image = read_image(mskt_dicom, echo=index)
        assert image.GetSize() == (256, 256, 24)
        np.testing.assert_allclose(image.GetSpacing(), (0.625, 0.625, 4.0), atol=1e-3)
        assert image.GetOrigin() == first.GetOrigin() and image.GetDirection() == first.GetDirection()
        means.append(float(sitk.GetArrayViewFromImage(image).mean()))
    assert means[0] > means[1] > means[2], f"T2 decay expected across echoes, got means {means}"
    direction = np.reshape(first.GetDirection(), (3, 3))
    assert abs(direction[0, 2]) > 0.95, "sagittal: the slice axis should run left-right"


# ----------------------------------------------------------------------------------------------- bad input

def image_from(array: np.ndarray, spacing=None) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    if spacing:
        image.SetSpacing(spacing)
    return image


def noise(shape=(6, 7, 8)) -> np.ndarray:
    return np.random.default_rng(1).random(shape).astype(np.float32)


@pytest.mark.parametrize("image, message", [
    (image_from(noise((7, 8))), "is 2D"),
    (image_from(noise((1, 7, 8))), "single slice"),
    (image_from(np.zeros((0, 7, 8), np.float32)), "is empty"),
    (image_from(np.full((6, 7, 8), np.nan, np.float32)), "entirely NaN"),
    (image_from(np.where(noise() > 0.9, np.inf, noise())), "NaN or infinite voxels"),
    (image_from(np.where(noise() > 0.9, np.nan, noise())), "NaN or infinite voxels"),
    (image_from(np.full((6, 7, 8), 42, np.int16)), "constant"),
    (image_from(noise(), spacing=(1.0, 1.0, 1e6)), "impossible voxel spacing"),
    (sitk.Image([5, 6, 7, 3], sitk.sitkFloat32), "is 4D"),
    (sitk.Image([5, 6, 7], sitk.sitkVectorFloat32, 3), "3 components per voxel"),
])
def test_bad_images_are_refused_with_a_clear_message(image: sitk.Image, message: str) -> None:
    with pytest.raises(InputError, match=message):
        validate_image(image)


def test_bad_files_are_refused_with_a_clear_message(tmp_path: Path) -> None:
    four_d = tmp_path / "series4d.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(noise((2, 3, 4, 5)), isVector=False), str(four_d))
    with pytest.raises(InputError, match="series4d.nii.gz is 4D"):
        read_image(four_d)
    zero_spacing = tmp_path / "zero.mha"
    sitk.WriteImage(image_from(noise()), str(zero_spacing))
    header = zero_spacing.read_bytes().replace(b"ElementSpacing = 1 1 1", b"ElementSpacing = 0 1 1")
    zero_spacing.write_bytes(header)
    with pytest.raises(InputError, match="zero.mha"):
        read_image(zero_spacing)
    with pytest.raises(InputError, match="no such file"):
        read_image(tmp_path / "absent.nrrd")
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(InputError, match="notes.txt is neither a supported image file"):
        read_image(text)
    one = write_image(make_image(), tmp_path / "one.nrrd")
    assert list_echoes(one) == []
    with pytest.raises(InputError, match="single image; echo 2 does not exist"):
        read_image(one, echo=2)


@pytest.fixture(scope="module")
def mskt_dicom() -> Path:
    from realdata import mskt_dicom as folder
    return folder()
