""".seg.nrrd files without MRML: the labelmap and the header fields Slicer's segmentation storage node writes.

``vtkMRMLSegmentationStorageNode`` (Slicer, slicer-core) writes a segmentation as a NRRD of label values with
one ``Segment{N}_…`` block per segment and a few ``Segmentation_…`` fields; slicerio reads and writes the same
layout. Writing it here with pynrrd keeps the CLI free of vtk and slicer (~2 s of imports, 800 MB installed)
while Slicer reads the file exactly as its own (checked in ``Testing/Python/test_segfile.py`` through the real
storage node: labels, names, colours and terminology).

    write_seg_nrrd(labelmap, "knee.seg.nrrd", model_tag="knee-bones/v2", laterality="left")
    labels, segments = read_seg_nrrd("knee.seg.nrrd")

One shared labelmap layer holds all bones (``Segment{N}_Layer`` 0, ``LabelValue`` the bone's label); the file
keeps the image's full grid (``Segmentation_ReferenceImageExtentOffset`` 0 0 0), so no geometry is lost.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from ..constants import BONES, MODEL_TAG, Bone
from ..errors import InputError
from ..files import write_atomically
from .terminology import terminology_string

SEG_SUFFIX = ".seg.nrrd"
COMPRESSION_LEVEL = 1  # fast gzip (pynrrd defaults to 9); labelmaps compress well at any level (not benchmarked)

# What Slicer writes for a binary-labelmap segmentation; the conversion parameters are Slicer's defaults,
# so a closed surface built from the file looks as it does after a Segment Editor session.
_CONVERSION_PARAMETERS = (
    "Decimation factor|0.0|Desired reduction in the total number of polygons. Range: 0.0 (no decimation) to 1.0 "
    "(as much simplification as possible). Value of 0.8 typically reduces data set size by 80% without losing too "
    "much details.&Smoothing factor|0.5|Smoothing factor. Range: 0.0 (no smoothing) to 1.0 (strong smoothing).&"
    "Compute surface normals|1|Compute surface normals. 1 (default) = surface normals are computed. 0 = surface "
    "normals are not computed (slightly faster but produces less smooth surface display, not used if "
    "vtkSurfaceNets3D is used).&Conversion method|0|Conversion method. 0 (default) = vtkDiscreteFlyingEdges3D is "
    "used to generate closed surface.1 = vtkSurfaceNets3D (more performant than flying edges).&SurfaceNets "
    "smoothing|0|SurfaceNets smoothing. 0 (default) = Smoothing done by vtkWindowedSincPolyDataFilter1 = Smoothing "
    "done in surface nets filter.&Joint smoothing|0|Perform joint smoothing.&Reference image geometry|{geometry}|"
    "Image geometry description string determining the geometry of the labelmap that is created in course of "
    "conversion. Can be copied from a volume, using the button.&Oversampling factor|1|Determines the oversampling of "
    "the reference image geometry. If it's a number, then all segments are oversampled with the same value (value of "
    "1 means no oversampling). If it has the value \"A\", then automatic oversampling is calculated.&Crop to "
    "reference image geometry|0|Crop the model to the extent of reference geometry. 0 (default) = created labelmap "
    "will contain the entire model. 1 = created labelmap extent will be within reference image extent.&Collapse "
    "labelmaps|1|Merge the labelmaps into as few shared labelmaps as possible 1 = created labelmaps will be shared if "
    "possible without overwriting each other.&Fractional labelmap oversampling factor|1|Determines the oversampling "
    "of the reference image geometry. All segments are oversampled with the same value (value of 1 means no "
    "oversampling).&Threshold fraction|0.5|Determines the threshold that the closed surface is created at as a "
    "fractional value between 0 and 1.&"
)


def _ijk_to_lps(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """(3x3 matrix whose columns are the i, j, k steps in LPS mm, origin in LPS mm)."""
    direction = np.asarray(image.GetDirection(), float).reshape(3, 3)
    return direction * np.asarray(image.GetSpacing(), float)[None, :], np.asarray(image.GetOrigin(), float)


def _geometry_string(steps: np.ndarray, origin: np.ndarray, size: Sequence[int]) -> str:
    """Slicer's "Reference image geometry": the IJK→RAS matrix row by row, then the extent, ';'-separated."""
    ras = np.diag([-1.0, -1.0, 1.0])
    matrix = np.eye(4)
    matrix[:3, :3] = ras @ steps
    matrix[:3, 3] = ras @ origin
    values = [f"{v:.17g}" for v in matrix.ravel()] + [str(v) for n in size for v in (0, n - 1)]
    return ";".join(values) + ";"


def _extent(array_xyz: np.ndarray) -> str:
    """The bounding box of the non-zero voxels (i0 i1 j0 j1 k0 k1), as Slicer writes the shared layer's extent."""
    nonzero = np.nonzero(array_xyz)
    if not nonzero[0].size:
        return "0 -1 0 -1 0 -1"
    return " ".join(f"{int(a.min())} {int(a.max())}" for a in nonzero)


def _color_string(bone: Bone) -> str:
    return " ".join(f"{c:.6g}" for c in bone.color)


def seg_nrrd_header(labelmap: sitk.Image, model_tag: str | None = None, laterality: str | None = None,
                    bones: Sequence[Bone] = BONES) -> dict:
    """The NRRD header (pynrrd's dict) of ``labelmap`` as a Slicer segmentation: geometry in LPS and one
    segment per bone (present or not, so the user always finds every bone to edit)."""
    steps, origin = _ijk_to_lps(labelmap)
    size = labelmap.GetSize()
    array_xyz = sitk.GetArrayViewFromImage(labelmap).transpose(2, 1, 0)
    extent = _extent(array_xyz)
    header: dict = {
        "type": "unsigned char",
        "dimension": 3,
        "space": "left-posterior-superior",
        "sizes": np.asarray(size),
        "space directions": steps.T,  # pynrrd: one row per axis
        "kinds": ["domain", "domain", "domain"],
        "encoding": "gzip",
        "space origin": origin,
    }
    for n, bone in enumerate(bones):
        tags = {}
        if model_tag:
            tags[MODEL_TAG] = model_tag
        tags["TerminologyEntry"] = terminology_string(bone, laterality)
        prefix = f"Segment{n}_"
        header[prefix + "Color"] = _color_string(bone)
        header[prefix + "ColorAutoGenerated"] = "0"
        header[prefix + "Extent"] = extent
        header[prefix + "ID"] = bone.name
        header[prefix + "LabelValue"] = str(bone.label)
        header[prefix + "Layer"] = "0"
        header[prefix + "Name"] = bone.name
        header[prefix + "NameAutoGenerated"] = "0"
        header[prefix + "Tags"] = "".join(f"{k}:{v}|" for k, v in tags.items())
    header["Segmentation_ContainedRepresentationNames"] = "Binary labelmap|"
    header["Segmentation_ConversionParameters"] = _CONVERSION_PARAMETERS.format(
        geometry=_geometry_string(steps, origin, size))
    header["Segmentation_MasterRepresentation"] = "Binary labelmap"
    header["Segmentation_ReferenceImageExtentOffset"] = "0 0 0"
    return header


def check_bone_labelmap(labelmap: sitk.Image) -> np.ndarray:
    """The array view of a 3D labelmap whose values are all background or bone labels (else a one-line
    error), shared by the MRML and the file writers so both refuse the same labelmaps."""
    if labelmap.GetDimension() != 3:
        raise InputError("a labelmap must be 3D")
    array = sitk.GetArrayViewFromImage(labelmap)
    unknown = set(np.unique(array).tolist()) - {0} - {b.label for b in BONES}
    if unknown:
        known = ", ".join(f"{b.label} {b.name}" for b in BONES)
        raise InputError(f"labelmap has values {sorted(unknown)} that are not bones ({known})")
    return array


def write_seg_nrrd(labelmap: sitk.Image, path: str | Path, model_tag: str | None = None,
                   laterality: str | None = None) -> Path:
    """Writes ``labelmap`` (0 background, bone labels of ``constants.BONES``) as a Slicer ``.seg.nrrd``,
    atomically (temp file, then rename). ``laterality`` ("left", "right" or None) goes into each segment's
    terminology as the anatomic-region modifier."""
    import nrrd  # pynrrd: imported here so that reading the module costs nothing

    path = Path(path)
    if not path.name.endswith(SEG_SUFFIX):
        raise InputError(f"{path.name}: a segmentation file must end with {SEG_SUFFIX}")
    array = check_bone_labelmap(labelmap)
    header = seg_nrrd_header(labelmap, model_tag, laterality)
    data = np.ascontiguousarray(array.astype(np.uint8, copy=False))  # (z, y, x) = C order of (x, y, z)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        nrrd.write(str(tmp), data, header, index_order="C", compression_level=COMPRESSION_LEVEL)

    return write_atomically(path, write, suffix=SEG_SUFFIX)


def read_seg_nrrd(path: str | Path) -> tuple[sitk.Image, list[dict]]:
    """Reads a single-layer ``.seg.nrrd`` (as ``write_seg_nrrd`` and Slicer write them) into a labelmap of bone
    labels (segments matched by name) and the segments' header fields (``name``, ``color``, ``tags`` ...)."""
    import nrrd

    path = Path(path)
    if not path.is_file():
        raise InputError(f"segmentation file not found: {path}")
    data, header = nrrd.read(str(path), index_order="C")
    if data.ndim != 3:
        raise InputError(f"{path.name}: only single-layer segmentations can be read without Slicer")
    segments = []
    n = 0
    while f"Segment{n}_ID" in header:
        prefix = f"Segment{n}_"
        tags = dict(t.split(":", 1) for t in header.get(prefix + "Tags", "").split("|") if ":" in t)
        segments.append({"id": header[prefix + "ID"], "name": header.get(prefix + "Name", ""),
                         "color": tuple(float(c) for c in header.get(prefix + "Color", "0 0 0").split()),
                         "label": int(header.get(prefix + "LabelValue", n + 1)), "tags": tags})
        n += 1
    by_name = {b.name: b for b in BONES}
    out = np.zeros(data.shape, np.uint8)
    for seg in segments:
        bone = by_name.get(seg["name"])
        if bone is not None:
            out[data == seg["label"]] = bone.label
    image = sitk.GetImageFromArray(out)
    steps = np.asarray(header["space directions"], float).T
    spacing = np.linalg.norm(steps, axis=0)
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetDirection(tuple(float(v) for v in (steps / spacing[None, :]).ravel()))
    image.SetOrigin(tuple(float(v) for v in header["space origin"]))
    return image, segments
