"""Bridges between SimpleITK images (LPS) and MRML volume nodes (RAS), and a headless MRML scene.

In Slicer, pass ``slicer.mrmlScene``; outside it (tests, CLI), ``create_scene`` builds a real MRML scene with
the application, colour, volumes and segmentations logics registered, as Slicer does at start-up, so the same
code paths run in both places. ITK describes space in LPS, MRML in RAS: the first two axes flip sign.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import vtk

import slicer
from slicer import util as slicer_util

from ..errors import InputError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
_headless_logics: list = []  # keeps the logics of headless scenes alive as long as the process


def create_scene() -> "slicer.vtkMRMLScene":
    """A headless MRML scene with the logics that segmentations need (Slicer's own set-up, without Qt)."""
    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    logics = {"Colors": slicer.vtkMRMLColorLogic(), "Segmentations": slicer.vtkSlicerSegmentationsModuleLogic()}
    if hasattr(slicer, "vtkSlicerVolumesLogic"):
        logics["Volumes"] = slicer.vtkSlicerVolumesLogic()
    for name, logic in logics.items():
        logic.SetMRMLScene(scene)
        if hasattr(logic, "SetMRMLApplicationLogic"):
            logic.SetMRMLApplicationLogic(app_logic)
        app_logic.SetModuleLogic(name, logic)
    _headless_logics.append((scene, app_logic, logics))
    return scene


def segmentations_logic(scene) -> "slicer.vtkSlicerSegmentationsModuleLogic":
    """The segmentations logic registered for ``scene`` (Slicer's own when running inside Slicer)."""
    for s, _, logics in _headless_logics:
        if s is scene:
            return logics["Segmentations"]
    if hasattr(slicer, "modules") and hasattr(slicer.modules, "segmentations"):
        return slicer.modules.segmentations.logic()
    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    logic.SetMRMLScene(scene)
    return logic


def _matrix3(m4: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[m4.GetElement(i, j) for j in range(3)] for i in range(3)])


def set_node_geometry(node, image: sitk.Image) -> None:
    """Copies origin, spacing and direction of ``image`` (LPS) onto a MRML volume node (RAS)."""
    direction = LPS_TO_RAS @ np.array(image.GetDirection()).reshape(3, 3)
    node.SetOrigin(*(LPS_TO_RAS @ np.array(image.GetOrigin())).tolist())
    node.SetSpacing(*image.GetSpacing())
    m = vtk.vtkMatrix4x4()
    for i in range(3):
        for j in range(3):
            m.SetElement(i, j, direction[i, j])
    node.SetIJKToRASDirectionMatrix(m)


def volume_node_from_image(scene, image: sitk.Image, name: str = "Volume", labelmap: bool = False):
    """Adds a scalar (or labelmap) volume node holding ``image`` to ``scene``."""
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError("only single-component 3D images can become volume nodes")
    cls = "vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode"
    node = scene.AddNewNodeByClass(cls, name)
    set_node_geometry(node, image)
    slicer_util.updateVolumeFromArray(node, sitk.GetArrayFromImage(image))
    if not labelmap:
        node.CreateDefaultDisplayNodes()
    return node


def image_from_volume_node(node) -> sitk.Image:
    """The voxels and geometry of a volume node as a SimpleITK image (LPS). A parent transform is refused
    (rather than silently ignored): the user must harden it first."""
    if node is None or node.GetImageData() is None:
        raise InputError("select an input volume that holds an image")
    if node.GetParentTransformNode() is not None:
        raise InputError(f"volume '{node.GetName()}' is under a transform; harden the transform first "
                         "(Data module: right-click → Harden transform)")
    array = slicer_util.arrayFromVolume(node)
    if array.ndim != 3:
        raise InputError(f"volume '{node.GetName()}' has {array.ndim - 3} extra dimensions (vector or multi-"
                         "component image); select a single-component 3D volume or one echo")
    image = sitk.GetImageFromArray(np.array(array, copy=True))
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASDirectionMatrix(m)
    image.SetDirection((LPS_TO_RAS @ _matrix3(m)).ravel().tolist())
    image.SetOrigin((LPS_TO_RAS @ np.array(node.GetOrigin())).tolist())
    image.SetSpacing(node.GetSpacing())
    return image
