"""Labelmaps ↔ MRML segmentation nodes: named, coloured, terminology-tagged Femur/Tibia/Fibula/Patella segments.

Segments are created through Slicer's own segmentations logic, with the input volume as reference geometry,
so they are ready for the Segment Editor. The reverse (an edited segmentation back to a labelmap) exports
the three bones by name, in a fixed label order, onto the reference volume's full grid, which makes the round
trip exact (without a reference the export is cropped to the segments' extent).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
import vtk

import slicer

from ..constants import BONES, CATEGORY_CODE, CATEGORY_MEANING, MODEL_TAG, SNOMED_SCHEME, TERMINOLOGY_CONTEXT, Bone
from ..errors import InputError
from ..files import write_atomically
from .mrml import image_from_volume_node, segmentations_logic, volume_node_from_image
from ..results.segfile import check_bone_labelmap
from ..segment.io import header_reader
from ..results.terminology import terminology_string


def terminology_entry(bone: Bone) -> str:
    """Slicer's serialized terminology string for ``bone`` (SNOMED CT category and type)."""
    entry = slicer.vtkSlicerTerminologyEntry()
    entry.SetTerminologyContextName(TERMINOLOGY_CONTEXT)
    for obj, code, meaning in ((entry.GetCategoryObject(), CATEGORY_CODE, CATEGORY_MEANING),
                               (entry.GetTypeObject(), bone.snomed_code, bone.snomed_meaning)):
        obj.SetCodingSchemeDesignator(SNOMED_SCHEME)
        obj.SetCodeValue(code)
        obj.SetCodeMeaning(meaning)
    return slicer.vtkSlicerTerminologiesModuleLogic.SerializeTerminologyEntry(entry)


def _style_segment(segment, bone: Bone, model_tag: str | None, laterality: str | None = None) -> None:
    segment.SetName(bone.name)
    segment.SetColor(*bone.color)
    entry = terminology_entry(bone) if laterality is None else terminology_string(bone, laterality)
    segment.SetTag(segment.GetTerminologyEntryTagName(), entry)
    if model_tag:
        segment.SetTag(MODEL_TAG, model_tag)


def show_3d(segmentation_node, visible: bool) -> None:
    """Shows the segments as surfaces in the 3D views, or hides them, as the Segment Editor's "Show 3D" does:
    on builds the closed-surface representation and turns the display's 3D visibility on; off turns it off and
    drops the surfaces, so that editing the segments stays fast (they are rebuilt on the next "on")."""
    if segmentation_node.GetDisplayNode() is None:
        segmentation_node.CreateDefaultDisplayNodes()
    display = segmentation_node.GetDisplayNode()
    if visible:
        segmentation_node.CreateClosedSurfaceRepresentation()
    else:
        segmentation_node.RemoveClosedSurfaceRepresentation()
    display.SetVisibility3D(bool(visible))


def model_tag_of(segmentation_node) -> str | None:
    """The model tag ``_style_segment`` put on the segments (the first segment that has one), or None for
    segments KneeSegmentation did not make."""
    segmentation = segmentation_node.GetSegmentation()
    for i in range(segmentation.GetNumberOfSegments()):
        value = vtk.reference("")
        if segmentation.GetNthSegment(i).GetTag(MODEL_TAG, value) and value.get():
            return str(value.get())
    return None


def labelmap_to_segmentation(scene, labelmap: sitk.Image, reference_volume_node, name: str = "Knee segmentation",
                             segmentation_node=None, model_tag: str | None = None, laterality: str | None = None):
    """Creates (or fills ``segmentation_node``, whose segments are replaced) a segmentation node with one
    segment per bone present in ``labelmap``; every bone absent from it still gets an empty segment, so
    the user always finds every bone to edit (a model made before the Patella class leaves it empty).
    ``laterality`` ("left"/"right", see ``segment/laterality.py``) goes into the terminology's anatomic-region modifier."""
    check_bone_labelmap(labelmap)
    logic = segmentations_logic(scene)
    label_node = volume_node_from_image(scene, sitk.Cast(labelmap, sitk.sitkUInt8), "__kneeseg_labels", labelmap=True)
    try:
        if segmentation_node is None:
            segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
            segmentation_node.CreateDefaultDisplayNodes()
        segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume_node)
        segmentation = segmentation_node.GetSegmentation()
        segmentation.RemoveAllSegments()
        if not logic.ImportLabelmapToSegmentationNode(label_node, segmentation_node):
            raise InputError("Slicer could not import the labelmap into the segmentation")
        by_label = _segments_by_label(segmentation)
        for bone in BONES:
            segment_id = by_label.get(bone.label)
            if segment_id is None:
                segment_id = segmentation.AddEmptySegment(bone.name, bone.name, list(bone.color))
            _style_segment(segmentation.GetSegment(segment_id), bone, model_tag, laterality)
        _order_segments(segmentation)
    finally:
        scene.RemoveNode(label_node)
    return segmentation_node


def _segments_by_label(segmentation) -> dict[int, str]:
    """Maps the label value of each imported segment (kept in its ``LabelValue``) to its segment ID."""
    out: dict[int, str] = {}
    for i in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(i)
        segment = segmentation.GetSegment(segment_id)
        out[int(segment.GetLabelValue())] = segment_id
    return out


def _node_ids(scene) -> set[str]:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def _order_segments(segmentation) -> None:
    for index, bone in enumerate(BONES):
        segment_id = segmentation.GetSegmentIdBySegmentName(bone.name)
        if segment_id:
            segmentation.SetSegmentIndex(segment_id, index)


def segmentation_to_labelmap(segmentation_node, reference_volume_node) -> sitk.Image:
    """The bones of ``segmentation_node`` as a uint8 labelmap on ``reference_volume_node``'s grid, exactly.
    Segments are found by name (Femur, Tibia, Fibula, Patella); other segments are ignored; where edited segments
    overlap, the bone listed later wins, as in Slicer's own export."""
    scene = segmentation_node.GetScene()
    logic = segmentations_logic(scene)
    segmentation = segmentation_node.GetSegmentation()
    ids = vtk.vtkStringArray()
    labels = []
    for bone in BONES:
        segment_id = segmentation.GetSegmentIdBySegmentName(bone.name)
        if segment_id:
            ids.InsertNextValue(segment_id)
            labels.append(bone.label)
    if ids.GetNumberOfValues() == 0:
        raise InputError(f"segmentation '{segmentation_node.GetName()}' has no "
                         f"{', '.join(b.name for b in BONES[:-1])} or {BONES[-1].name} segment")
    before = _node_ids(scene)
    label_node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__kneeseg_export")
    try:
        ok = logic.ExportSegmentsToLabelmapNode(segmentation_node, ids, label_node, reference_volume_node)
        if not ok:
            raise InputError("Slicer could not export the segmentation to a labelmap")
        exported = image_from_volume_node(label_node)
    finally:
        # The export also adds a display node and a colour table; the user's scene must not collect them.
        for node_id in _node_ids(scene) - before:
            node = scene.GetNodeByID(node_id)
            if node is not None:
                scene.RemoveNode(node)
    # The export numbers segments 1..n in the order given; map them back to bone label values.
    array = sitk.GetArrayFromImage(exported)
    out = np.zeros(array.shape, np.uint8)
    for index, label in enumerate(labels, start=1):
        out[array == index] = label
    image = sitk.GetImageFromArray(out)
    image.CopyInformation(exported)
    return image


def save_segmentation(segmentation_node, path: str | Path) -> Path:
    """Writes ``.seg.nrrd`` through MRML's segmentation storage node, atomically (temp file, then rename)."""
    path = Path(path)
    if not path.name.endswith(".seg.nrrd"):
        raise InputError(f"{path.name}: a segmentation file must end with .seg.nrrd")
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        storage = slicer.vtkMRMLSegmentationStorageNode()
        storage.SetFileName(str(tmp))
        if not storage.WriteData(segmentation_node):
            raise InputError(f"could not write {path}")
        from ..segment.io import verify_written

        verify_written(tmp, path)  # the storage node, like ITK, may not notice a full disk

    return write_atomically(path, write, suffix=".seg.nrrd")


OFFSET_KEY = "Segmentation_ReferenceImageExtentOffset"


def segmentation_grid_mismatch(path: str | Path, image: sitk.Image) -> str | None:
    """Why the ``.seg.nrrd`` at ``path`` was not drawn on ``image``'s voxel grid (or None if it was), from its
    header alone. A segmentation may cover a sub-box of its reference image (Slicer crops to the segments,
    recording where in ``Segmentation_ReferenceImageExtentOffset``); its spacing, direction and the reference
    origin this implies must match ``image``, as a labelmap file's grid must (``cases.geometry_mismatch``)."""
    from ..learn.cases import GEOMETRY_RTOL

    reader = header_reader(path, "could not be read as a segmentation")
    if reader.GetDimension() != 3:
        return f"a {reader.GetDimension()}D segmentation"
    spacing, direction = np.array(reader.GetSpacing()), np.array(reader.GetDirection()).reshape(3, 3)
    if not np.allclose(spacing, image.GetSpacing(), rtol=GEOMETRY_RTOL, atol=0):
        return f"spacing {tuple(spacing)} vs {image.GetSpacing()} mm"
    if not np.allclose(direction.ravel(), image.GetDirection(), rtol=0, atol=GEOMETRY_RTOL):
        return "direction (orientation) differs"
    offset = np.zeros(3)
    if reader.HasMetaDataKey(OFFSET_KEY):
        try:
            offset = np.array([float(v) for v in reader.GetMetaData(OFFSET_KEY).split()][:3])
        except ValueError:
            pass
    reference_origin = np.array(reader.GetOrigin()) - direction @ (spacing * offset)
    if not np.allclose(reference_origin, image.GetOrigin(), rtol=0, atol=GEOMETRY_RTOL * 10 * float(spacing.max())):
        shift = float(np.linalg.norm(reference_origin - np.array(image.GetOrigin())))
        return f"drawn on a grid shifted by {shift:.3g} mm"
    return None


def load_segmentation(scene, path: str | Path, name: str | None = None):
    """Reads a ``.seg.nrrd`` into a new segmentation node of ``scene``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"segmentation file not found: {path}")
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name or path.name.replace(".seg.nrrd", ""))
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        scene.RemoveNode(node)
        raise InputError(f"could not read the segmentation {path}")
    return node
