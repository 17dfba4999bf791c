"""The echoes of a multi-echo series in the scene: a MultiVolume's components or a Sequence's volumes.

Counting and naming the echoes needs only MRML, never torch, so the Slicer module fills its echo list
before (or without) the segmentation's dependencies; ``logic`` and ``training_logic`` read the chosen echo's
image through ``image_for_echo``. Files on disk are split into echoes by ``io`` (by EchoTime).
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

import slicer
from slicer import util as slicer_util

from ..errors import InputError
from .mrml import image_from_volume_node

# MultiVolume (multi-echo) nodes keep their frame values in these attributes (MultiVolumeExplorer's names).
FRAME_LABELS_ATTRIBUTE = "MultiVolume.FrameLabels"
FRAME_TAG_ATTRIBUTE = "MultiVolume.FrameIdentifyingDICOMTagName"
FRAME_UNITS_ATTRIBUTE = "MultiVolume.FrameIdentifyingDICOMTagUnits"


def echo_sequence(volume_node):
    """The sequence behind ``volume_node`` when it is the proxy of a Sequence browser holding several volumes
    (a multi-echo series loaded as a sequence), else None."""
    scene = volume_node.GetScene() if volume_node is not None else None
    if scene is None:
        return None
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSequenceBrowserNode")):
        sequence = scene.GetNthNodeByClass(i, "vtkMRMLSequenceBrowserNode").GetSequenceNode(volume_node)
        if sequence is not None and sequence.GetNumberOfDataNodes() > 1:
            return sequence
    return None


def echo_count(volume_node) -> int:
    """Number of echoes: N for a multi-echo MultiVolume (N scalar components) or a Sequence of N volumes shown
    through this proxy volume, 1 for an ordinary volume, 0 without an image."""
    image_data = volume_node.GetImageData() if volume_node is not None else None
    if image_data is None:
        return 0
    components = int(image_data.GetNumberOfScalarComponents())
    if components > 1:
        return components
    sequence = echo_sequence(volume_node)
    return sequence.GetNumberOfDataNodes() if sequence is not None else 1


def _frame_values(volume_node, n: int) -> tuple[list[str], str, str]:
    """(values, name, unit) of the echoes, from the sequence index or the MultiVolume attributes."""
    sequence = echo_sequence(volume_node)
    if sequence is not None:
        return ([sequence.GetNthIndexValue(i) for i in range(n)], sequence.GetIndexName() or "",
                sequence.GetIndexUnit() or "")
    values = (volume_node.GetAttribute(FRAME_LABELS_ATTRIBUTE) or "").split(",")
    return (values if len(values) == n else [""] * n, volume_node.GetAttribute(FRAME_TAG_ATTRIBUTE) or "",
            volume_node.GetAttribute(FRAME_UNITS_ATTRIBUTE) or "")


def echo_labels(volume_node) -> list[str]:
    """Human-readable names of the echoes, e.g. ``["Echo 1 (EchoTime 6.3 ms)", ...]``; empty for one echo."""
    n = echo_count(volume_node)
    if n <= 1:
        return []
    values, name, unit = _frame_values(volume_node, n)
    labels = []
    for i, value in enumerate(values):
        detail = " ".join(part for part in (name, value.strip(), unit) if part)
        labels.append(f"Echo {i + 1} ({detail})" if value.strip() else f"Echo {i + 1}")
    return labels


def image_for_echo(volume_node, echo: int | None = None) -> sitk.Image:
    """The image of one echo of ``volume_node`` (LPS), read on the calling thread.

    Single-echo volumes ignore ``echo`` (None or 0). For a multi-component volume the component is copied
    into a scalar volume node that is never added to the scene; for a Sequence proxy, the sequence's volume
    of that echo is read. Either way the scene is not modified."""
    n = echo_count(volume_node)
    if n <= 1 or volume_node.GetParentTransformNode() is not None:
        if echo not in (None, 0):
            raise InputError(f"volume '{volume_node.GetName()}' has a single echo; echo {echo + 1} does not exist")
        return image_from_volume_node(volume_node)  # also refuses missing images and parent transforms
    if echo is None:
        raise InputError(f"volume '{volume_node.GetName()}' holds {n} echoes; choose one")
    if not 0 <= echo < n:
        raise InputError(f"volume '{volume_node.GetName()}' has echoes 1 to {n}; echo {echo + 1} does not exist")
    sequence = echo_sequence(volume_node)
    if sequence is not None:
        return image_from_volume_node(sequence.GetNthDataNode(echo))
    component = np.ascontiguousarray(slicer_util.arrayFromVolume(volume_node)[..., echo])
    single = slicer.vtkMRMLScalarVolumeNode()  # outside any scene: the scene is not modified
    single.SetName(volume_node.GetName())
    single.CopyOrientation(volume_node)
    slicer_util.updateVolumeFromArray(single, component)
    return image_from_volume_node(single)
