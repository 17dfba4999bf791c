"""KneeSegmentation: Femur, Tibia, Fibula and Patella segments from a knee MRI, with one button.

The only file of the extension that imports qt, ctk, slicer.app or ScriptedLoadableModule. It is thin: the
panel (Resources/UI/KneeSegmentation.ui) is bound to a parameter node; the work is done by
``KneeSegmentationLib.scene.logic.SegmentationLogic`` (no Qt, tested under slicer-core), which runs the library's
pipeline in a worker thread while a QTimer here polls its progress. torch is imported only after the
dependency check, so the module loads (and can offer to install PyTorch) in a Slicer without torch.
"""
from __future__ import annotations

import enum
import logging
import os
import tempfile
import traceback

import qt
import vtk

import slicer
from slicer import vtkMRMLMarkupsROINode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

# torch-free parts of the library only; the rest is imported after ensureDependencies().
from KneeSegmentationLib import dependencies, resources
from KneeSegmentationLib.errors import KneeSegError

# Slicer's main thread holds Python's GIL while Qt's event loop runs, so a Python worker thread only runs
# when the main thread lets go of it. The poll timer therefore also yields the GIL for part of each tick (the
# pattern of SimpleITK's SlicerSimpleFilters; here an Event.wait that ends early when the run does). The
# worker's torch and SimpleITK calls release the GIL while they compute, so they overlap with the event loop;
# only the worker's Python glue needs these windows.
POLL_INTERVAL_MS = 50
RETRAIN_POLL_INTERVAL_MS = 1000  # the retraining child writes a CSV row every few seconds
CURVE_HEIGHT_PX = 90
GIL_YIELD_S = 0.015  # see test_logic.py::test_background_run_progresses_when_the_main_thread_holds_the_gil
DEFAULT_MODEL_TEXT = "Default model"

#
# KneeSegmentation
#


class KneeSegmentation(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Knee Segmentation")
        self.parent.categories = [_("Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["KneeSegmentation developers"]
        self.parent.helpText = _("""
Segments the <b>Femur</b>, <b>Tibia</b>, <b>Fibula</b> and <b>Patella</b> of a knee MRI (any orientation, any contrast the
model was trained for) into an editable segmentation. Select the input volume (and the echo of a multi-echo
series loaded as a MultiVolume or a Sequence) and click <b>Apply</b>; <b>Options</b> (collapsed) hold an ROI box around the knee,
the device, bias correction, a mirrored second pass and an uncertainty map. The work runs in the background;
<b>Cancel</b> stops it and leaves the scene unchanged. The result line gives each bone's volume and the bones that were
not found; <b>Show 3D</b> shows or hides the bones' surfaces. Open the result in the Segment Editor to correct it.
A segmentation that already holds segments is never overwritten without asking.
Not a medical device; results must be reviewed.
""")
        self.parent.acknowledgementText = _("""
Built on 3D Slicer's scripted module template (Jean-Christophe Fillion-Robin, Kitware; Andras Lasso, PerkLab;
Steve Pieper, Isomics). The sample image is a de-identified multi-echo knee series from the MIT-licensed
mskt package (pymskt, Anthony Gatti).
""")
        icon = resources.icon_file()
        if icon.is_file():  # Resources/ sits beside the module folder, not inside it (see CMakeLists.txt)
            self.parent.icon = qt.QIcon(str(icon))
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """The real knee MRI in the Sample Data module, loaded from the extension's folder (no internet)."""
    import SampleData

    try:
        sample = resources.knee_sample()
    except KneeSegError as error:
        logging.warning(f"KneeSegmentation: sample data not registered: {error}")
        return
    if hasattr(SampleData.SampleDataLogic, "registerCustomSampleDataCategory"):  # Slicer ≥ 5.9
        SampleData.SampleDataLogic.registerCustomSampleDataCategory(sample.category, title=_("Knee Segmentation"))
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category=sample.category,
        sampleName=sample.name,
        thumbnailFileName=str(sample.thumbnail),
        uris=sample.uri,
        fileNames=sample.path.name,
        checksums=sample.checksum,
        nodeNames=sample.name,
    )


#
# Parameter node
#


class Device(enum.Enum):
    AUTO = "auto"
    CPU = "cpu"
    GPU = "gpu"

    def label(self) -> str:
        return {"auto": _("Auto"), "cpu": _("CPU"), "gpu": _("GPU")}[self.value]


@parameterNodeWrapper
class KneeSegmentationParameterNode:
    """The panel's state, saved with the scene.

    inputVolume - the knee MRI; echo - which echo of a multi-echo series (MultiVolume or Sequence proxy);
    roi - optional box around the knee (none: found automatically); modelPath - a model version folder
    ("" = the default model); device, n4, tta, uncertainty - run options; outputSegmentation - none: a new
    node; show3D - the result's surfaces in the 3D view.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    echo: int = 0
    roi: vtkMRMLMarkupsROINode
    modelPath: str = ""
    device: Device = Device.AUTO
    n4: bool = True
    tta: bool = True
    uncertainty: bool = False
    outputSegmentation: vtkMRMLSegmentationNode
    show3D: bool = True


#
# KneeSegmentationWidget
#


class KneeSegmentationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._run = None  # BackgroundRun in progress
        self._runTarget = None  # (volume, output node or None, overwrite)
        self._modelPaths: list[str] = []
        self._choices = {}  # model path -> KneeSegmentationLib.scene.choices.ModelChoice
        self._timer = None
        self._retrain = None  # RetrainJob in progress (a child process; see KneeSegmentationLib/learn/retrain.py)
        self._retrainTimer = None

    # -- set-up and scene life cycle (as in Slicer's template)
    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(str(resources.ui_file()))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = KneeSegmentationLogic()

        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_INTERVAL_MS)
        self._timer.connect("timeout()", self.onPoll)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.openSegmentEditorButton.connect("clicked(bool)", self.onOpenSegmentEditor)
        self.ui.show3DButton.connect("toggled(bool)", self.onShow3D)
        self.ui.refreshModelsButton.connect("clicked(bool)", self.refreshModels)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.echoComboBox.connect("currentIndexChanged(int)", self.onEchoChanged)
        self.ui.inputSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.refreshEchoes)
        self.ui.installDependenciesButton.connect("clicked(bool)", self.onInstallDependencies)

        self._retrainTimer = qt.QTimer()
        self._retrainTimer.setInterval(RETRAIN_POLL_INTERVAL_MS)
        self._retrainTimer.connect("timeout()", self.onRetrainPoll)
        self.ui.saveCaseButton.connect("clicked(bool)", self.onSaveCase)
        self.ui.retrainButton.connect("clicked(bool)", self.onRetrain)
        self.ui.stopRetrainButton.connect("clicked(bool)", self.onStopRetrain)
        self.ui.makeDefaultButton.connect("clicked(bool)", self.onMakeDefault)

        self.ui.cancelButton.enabled = False
        self.ui.progressBar.setValue(0)
        self.initializeParameterNode()
        self.refreshEnvironment()

    def cleanup(self) -> None:
        if self._run is not None:
            self._run.cancel()
        if self._timer is not None:
            self._timer.stop()
        if self._retrain is not None:  # no orphan training process outlives the module
            self._retrain.stop()
        if self._retrainTimer is not None:
            self._retrainTimer.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        if self._run is not None:
            self._run.cancel()  # its result would refer to nodes that are about to disappear
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode and not firstVolumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Each bound widget carries a "SlicerParameterName" property in the .ui file.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
            self.refreshEchoes()
            self._selectModelInCombo()
            self._updateButtons()

    # -- environment: dependencies, devices, models
    def refreshEnvironment(self) -> None:
        missing = dependencies.missing_packages()
        self.ui.installDependenciesButton.visible = missing.any
        if missing.any:
            self.ui.deviceInfoLabel.text = _("Not installed yet: {names}").format(names=missing.describe())
            self.ui.modelInfoLabel.text = _("Install the dependencies to list the models.")
            return
        try:
            self.ui.deviceInfoLabel.text = self.logic.segmentation.describe_devices()
        except Exception as error:  # a broken torch install: say so, keep the panel usable
            self.ui.deviceInfoLabel.text = _("PyTorch does not load: {error}").format(error=error)
            return
        self.refreshModels()

    def refreshModels(self) -> None:
        if dependencies.missing_packages().any:
            return
        with slicer.util.tryWithErrorDisplay(_("Could not list the models."), waitCursor=True):
            choices = self.logic.segmentation.model_choices()
            wasBlocked = self.ui.modelComboBox.blockSignals(True)
            self.ui.modelComboBox.clear()
            self._modelPaths = [""]
            self.ui.modelComboBox.addItem(_(DEFAULT_MODEL_TEXT))
            for choice in choices:  # hovering an entry tells what it is in plain words (modelcard.plain_summary)
                self.ui.modelComboBox.addItem(choice.label)
                self.ui.modelComboBox.setItemData(self.ui.modelComboBox.count - 1, choice.summary, qt.Qt.ToolTipRole)
                self._modelPaths.append(str(choice.path))
            self._choices = {str(c.path): c for c in choices}
            default = next((c for c in choices if c.is_default), None)  # none installed: _showModelInfo says so
            if default is not None:
                self.ui.modelComboBox.setItemData(0, default.summary, qt.Qt.ToolTipRole)
            self.ui.modelComboBox.blockSignals(wasBlocked)
            self._selectModelInCombo()

    def _selectModelInCombo(self) -> None:
        if not self._parameterNode or not self._modelPaths:
            return
        path = self._parameterNode.modelPath
        index = self._modelPaths.index(path) if path in self._modelPaths else 0
        self.ui.modelComboBox.currentIndex = index
        self._showModelInfo(self._modelPaths[index])

    def onModelChanged(self, index: int) -> None:
        if self._parameterNode and 0 <= index < len(self._modelPaths):
            self._parameterNode.modelPath = self._modelPaths[index]
            self._showModelInfo(self._modelPaths[index])

    def _showModelInfo(self, path: str) -> None:
        choices = self._choices
        if not path:
            try:
                path = str(self.logic.segmentation.default_model_path())
            except KneeSegError as error:
                self.ui.modelInfoLabel.text = str(error)
                return
        choice = choices.get(path)  # one record: choices.ModelChoice
        self.ui.modelInfoLabel.text = (choice.summary + "\n" + choice.user_summary
                                       + (_(" (default)") if choice.is_default else "")) if choice else path
        self.ui.modelInfoLabel.toolTip = choice.description if choice else ""

    def refreshEchoes(self, *args) -> None:
        """Fills the echo list for a multi-echo (multi-component) volume; hidden for ordinary volumes.
        Reads the selector itself: this slot may run before the parameter node has seen the new volume."""
        from KneeSegmentationLib.scene.echoes import echo_labels  # MRML only: works before torch is installed

        labels = echo_labels(self.ui.inputSelector.currentNode())
        wasBlocked = self.ui.echoComboBox.blockSignals(True)
        self.ui.echoComboBox.clear()
        for label in labels:
            self.ui.echoComboBox.addItem(label)
        multi = len(labels) > 1
        self.ui.echoComboBox.visible = multi
        self.ui.echoLabel.visible = multi
        if multi and self._parameterNode:
            self.ui.echoComboBox.currentIndex = min(self._parameterNode.echo, len(labels) - 1)
        self.ui.echoComboBox.blockSignals(wasBlocked)

    def onEchoChanged(self, index: int) -> None:
        if self._parameterNode and index >= 0:
            self._parameterNode.echo = index

    def _updateButtons(self, caller=None, event=None) -> None:
        running = self._run is not None
        hasInput = bool(self._parameterNode and self._parameterNode.inputVolume)
        self.ui.applyButton.enabled = hasInput and not running
        self.ui.applyButton.toolTip = _("Segment the bones") if hasInput else _("Select an input volume")
        self.ui.cancelButton.enabled = running
        self.ui.inputsCollapsibleButton.enabled = not running
        self.ui.optionsCollapsibleButton.enabled = not running
        self.ui.outputsCollapsibleButton.enabled = not running
        output = self._parameterNode.outputSegmentation if self._parameterNode else None
        self.ui.openSegmentEditorButton.enabled = bool(output) and not running
        self.ui.show3DButton.enabled = bool(output) and not running
        retraining = self._retrain is not None
        self.ui.saveCaseButton.enabled = hasInput and bool(output) and not running
        self.ui.retrainButton.enabled = not retraining and not running
        self.ui.stopRetrainButton.enabled = retraining
        self.ui.makeDefaultButton.enabled = not retraining and not running

    # -- dependencies
    def ensureDependencies(self) -> bool:
        """True when torch and safetensors import; otherwise asks, installs, and says whether it worked."""
        missing = dependencies.missing_packages()
        if not missing.any:
            return True
        if not slicer.util.confirmOkCancelDisplay(
                _("KneeSegmentation needs {names}, which are not installed in Slicer's Python.\n\n"
                  "Install now? This downloads several hundred MB for PyTorch and can take minutes. "
                  "Slicer's own numpy, VTK and SimpleITK are kept as they are.").format(names=missing.describe()),
                windowTitle=_("Install dependencies")):
            return False
        with slicer.util.tryWithErrorDisplay(_("Installing the dependencies failed."), waitCursor=True):
            installDependencies(missing)
        self.refreshEnvironment()
        return not dependencies.missing_packages().any

    def onInstallDependencies(self) -> None:
        self.ensureDependencies()

    # -- running
    def onApplyButton(self) -> None:
        if self._run is not None or not self.ensureDependencies():
            return
        p = self._parameterNode
        output, overwrite = p.outputSegmentation, False
        try:
            from KneeSegmentationLib.scene.logic import describe_output

            if output is not None and output.GetSegmentation().GetNumberOfSegments() > 0:
                choice = askOverwrite(describe_output(output))
                if choice is None:
                    return
                output, overwrite = (output, True) if choice else (None, False)
            self._run = self.logic.start(p, output, overwrite)
        except KneeSegError as error:
            slicer.util.errorDisplay(str(error), windowTitle=_("Knee segmentation"))
            return
        except Exception as error:
            showUnexpected(error)
            return
        self._runTarget = (p.inputVolume, output, overwrite)
        self.ui.progressBar.setValue(0)
        self.ui.statusLabel.text = _("Starting…")
        self._updateButtons()
        self._timer.start()

    def onCancelButton(self) -> None:
        if self._run is not None:
            self._run.cancel()
            self.ui.statusLabel.text = _("Cancelling…")
            self.ui.cancelButton.enabled = False

    def onPoll(self) -> None:
        if self._run is None:
            self._timer.stop()
            return
        status = self._run.poll(wait_s=GIL_YIELD_S)  # lets the worker thread run (see GIL_YIELD_S)
        self.ui.progressBar.setValue(int(round(100 * status.fraction)))
        self.ui.statusLabel.text = status.stage
        if not status.finished:
            return
        self._timer.stop()
        volume, output, overwrite = self._runTarget
        self._run, self._runTarget = None, None
        try:
            if status.cancelled:
                self.ui.progressBar.setValue(0)
                self.ui.statusLabel.text = _("Cancelled; the scene is unchanged.")
            elif isinstance(status.error, KneeSegError):
                self.ui.statusLabel.text = _("Failed.")
                slicer.util.errorDisplay(str(status.error), windowTitle=_("Knee segmentation"))
            elif status.error is not None:
                self.ui.statusLabel.text = _("Failed.")
                showUnexpected(status.error)
            else:
                self._showResult(status, volume, output, overwrite)
        except Exception as error:  # never let an error escape into Qt's timer: say what happened
            showUnexpected(error)
        finally:
            self._updateButtons()

    def _applyResult(self, status, volume, output, overwrite):
        """Adds the result to the scene; None if the user declined or it failed (and was told why)."""
        from KneeSegmentationLib.scene.logic import OutputNotEmpty

        try:
            try:
                with slicer.util.WaitCursor():
                    return self.logic.segmentation.apply(status.result, volume, output, overwrite)
            except OutputNotEmpty as error:  # segments were added to the output while the run worked
                choice = askOverwrite(str(error))
                if choice is None:
                    self.ui.statusLabel.text = _("Result discarded; the output was left as it was.")
                    return None
                return self.logic.segmentation.apply(status.result, volume, output if choice else None, choice)
        except KneeSegError as error:
            self.ui.statusLabel.text = _("Failed.")
            slicer.util.errorDisplay(str(error), windowTitle=_("Knee segmentation"))
            return None

    def _showResult(self, status, volume, output, overwrite) -> None:
        segmentation = self._applyResult(status, volume, output, overwrite)
        if segmentation is None:
            return
        self._parameterNode.outputSegmentation = segmentation
        # kept (hidden) so that "Save as training case" can record how much the user edited
        self.logic.training.remember_model_output(segmentation, status.result.labelmap, status.result.model.tag)
        self.logic.show3D(segmentation, self._parameterNode.show3D)
        slicer.util.setSliceViewerLayers(background=volume)
        from KneeSegmentationLib.results.statistics import result_line  # the line kneeseg prints, too

        result = status.result
        text = result_line(result) + "\n" + _("Done in {seconds:.1f} s on {device} with {model}.").format(
            seconds=status.elapsed_s, device=result.device, model=result.model.tag)
        if result.warnings:
            text += "\n" + "\n".join(result.warnings)
            for warning in result.warnings:
                logging.warning(f"KneeSegmentation: {warning}")
        self.ui.statusLabel.text = text
        logging.info(f"KneeSegmentation timings: {result.timings}")

    # -- correct and retrain (KneeSegmentationLib/scene/training_logic.py)
    def onSaveCase(self) -> None:
        parameters = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Could not save the training case."), waitCursor=True):
            folder = self.logic.training.save_case(parameters.inputVolume, parameters.outputSegmentation,
                                                   self.logic.echoOf(parameters))
            count = len(self.logic.training.cases())
            self.ui.trainingStatusLabel.text = _("Saved case {name}; {count} case(s) in {folder}").format(
                name=folder.name, count=count, folder=folder.parent)

    def onRetrain(self) -> None:
        if not self.ensureDependencies():
            return
        training = self.logic.training
        cases = training.cases()
        if not cases:
            slicer.util.infoDisplay(_("Save at least one corrected segmentation as a training case first."))
            return
        settings = training.retrain_settings()
        if not slicer.util.confirmOkCancelDisplay(
                _("Fine-tune {model} on {count} saved case(s) for {steps} steps, in a separate process?\n\n"
                  "With two or more cases, every fourth case (at least one) is held out to compare the new "
                  "version with the current one; it becomes the default only if it is better there (with one "
                  "case, you choose). Slicer stays usable; Stop ends it and keeps no partial model.").format(
                    model=settings.model, count=len(cases), steps=settings.steps),
                windowTitle=_("Retrain")):
            return
        with slicer.util.tryWithErrorDisplay(_("Could not start the retraining."), waitCursor=True):
            self._retrain = training.start_retrain()
            self.ui.trainingProgressBar.setValue(0)
            self._retrainTimer.start()
        self._updateButtons()

    def onStopRetrain(self) -> None:
        if self._retrain is None:
            return
        with slicer.util.WaitCursor():
            status = self._retrain.stop()
        self._retrainFinished(status)

    def onRetrainPoll(self) -> None:
        if self._retrain is None:
            self._retrainTimer.stop()
            return
        try:
            status = self._retrain.poll()
            self.ui.trainingProgressBar.setValue(int(round(100 * status.fraction)))
            text = _("{message}: step {step}/{total}").format(message=status.message, step=status.step,
                                                              total=status.total_steps)
            if status.loss:
                text += _(", loss {loss:.3f}").format(loss=status.loss[-1][1])
            if status.validation:
                text += _(", validation Dice {dice:.3f}").format(dice=status.validation[-1][1]["score"])
            self.ui.trainingStatusLabel.text = text
            self._drawCurve(status)
            if status.finished:
                self._retrainFinished(status)
        except Exception as error:  # never let an error escape into Qt's timer
            showUnexpected(error)

    def _retrainFinished(self, status) -> None:
        self._retrainTimer.stop()
        self._retrain = None
        self._drawCurve(status)
        self.ui.trainingStatusLabel.text = status.message
        if status.phase == "done":
            self.ui.trainingProgressBar.setValue(100)
            self.logic.segmentation.forget_models()
            self.refreshModels()
        elif status.phase == "failed":
            slicer.util.errorDisplay(_("Retraining failed."), windowTitle=_("Retrain"), detailedText=status.error)
        self._updateButtons()

    def _drawCurve(self, status) -> None:
        """Training loss (blue, scaled to its maximum) and validation Dice (red, 0–1) against the step."""
        from KneeSegmentationLib.scene.training_logic import curve_points

        width, height = max(int(self.ui.trainingCurveLabel.width), 200), CURVE_HEIGHT_PX
        pixmap = qt.QPixmap(width, height)
        pixmap.fill(qt.QColor("white"))
        painter = qt.QPainter(pixmap)
        for key, colour in (("loss", "#1f77b4"), ("dice", "#d62728")):
            points = curve_points(status, width, height)[key]
            painter.setPen(qt.QPen(qt.QColor(colour), 2))
            for (x0, y0), (x1, y1) in zip(points, points[1:]):
                painter.drawLine(qt.QPointF(x0, y0), qt.QPointF(x1, y1))
            if len(points) == 1:
                painter.drawEllipse(qt.QPointF(*points[0]), 2, 2)
        painter.end()
        self.ui.trainingCurveLabel.setPixmap(pixmap)

    def onMakeDefault(self) -> None:
        """Makes the version chosen in the model list the default (also a rollback to an older version)."""
        index = self.ui.modelComboBox.currentIndex
        if not 0 < index < len(self._modelPaths):
            slicer.util.infoDisplay(_("Choose a model version in the list first."))
            return
        with slicer.util.tryWithErrorDisplay(_("Could not change the default model."), waitCursor=True):
            self.logic.training.select_version(self._modelPaths[index])
            self.refreshModels()  # the default flag and the default entry's tooltip change

    def onShow3D(self, visible: bool) -> None:
        segmentation = self._parameterNode.outputSegmentation if self._parameterNode else None
        if segmentation is None:
            return
        with slicer.util.tryWithErrorDisplay(_("Could not change the 3D display."), waitCursor=True):
            self.logic.show3D(segmentation, visible)

    def onOpenSegmentEditor(self) -> None:
        segmentation = self._parameterNode.outputSegmentation
        volume = self._parameterNode.inputVolume
        if segmentation is None:
            return
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        editor.setSegmentationNode(segmentation)
        if volume is not None:
            if hasattr(editor, "setSourceVolumeNode"):
                editor.setSourceVolumeNode(volume)
            else:  # Slicer < 5.2
                editor.setMasterVolumeNode(volume)


def askOverwrite(description: str):
    """True: replace the segments; False: create a new segmentation; None: do nothing."""
    box = qt.QMessageBox(slicer.util.mainWindow())
    box.setWindowTitle(_("Output segmentation is not empty"))
    box.setIcon(qt.QMessageBox.Warning)
    box.setText(description)
    box.setInformativeText(_("Replace its segments with the new result, or put the result in a new segmentation?"))
    replace = box.addButton(_("Replace segments"), qt.QMessageBox.DestructiveRole)
    new = box.addButton(_("Create new segmentation"), qt.QMessageBox.AcceptRole)
    box.addButton(qt.QMessageBox.Cancel)
    box.setDefaultButton(new)
    box.exec_()
    clicked = box.clickedButton()
    return True if clicked == replace else (False if clicked == new else None)


def showUnexpected(error: BaseException) -> None:
    details = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    logging.error(details)
    slicer.util.errorDisplay(_("Unexpected error: {error}").format(error=error),
                             windowTitle=_("Knee segmentation"), detailedText=details)


def installDependencies(missing) -> None:
    """torch through the PyTorch extension when it is installed (it picks the CUDA/CPU build), else pip;
    other packages with pip. Every pip call pins Slicer's numpy, vtk and SimpleITK (constraints file)."""
    with tempfile.TemporaryDirectory() as folder:
        constraints = os.path.join(folder, "slicer-constraints.txt")
        with open(constraints, "w") as f:
            f.write(dependencies.protected_constraints())
        if missing.torch:
            try:
                import PyTorchUtils
            except ImportError:
                PyTorchUtils = None
            if PyTorchUtils is not None:
                torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
                    askConfirmation=False, torchVersionRequirement=dependencies.TORCH_REQUIREMENT.replace("torch", ""))
                if torch is None:
                    raise KneeSegError("PyTorch could not be installed through the PyTorch extension")
            else:
                slicer.util.pip_install(dependencies.pip_arguments([dependencies.TORCH_REQUIREMENT], constraints))
        if missing.pip:
            slicer.util.pip_install(dependencies.pip_arguments(list(missing.pip), constraints))


#
# KneeSegmentationLogic
#


class KneeSegmentationLogic(ScriptedLoadableModuleLogic):
    """Slicer-side logic: turns the parameter node into library settings and delegates to
    ``KneeSegmentationLib.scene.logic.SegmentationLogic`` (composition, not inheritance). Usable from the Python
    console: ``KneeSegmentationLogic().run(volumeNode)``."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._segmentation = None
        self._training = None

    def getParameterNode(self):
        return KneeSegmentationParameterNode(super().getParameterNode())

    @property
    def segmentation(self):
        """The Qt-free scene logic (imports torch: call after the dependency check)."""
        if self._segmentation is None or self._segmentation.scene is not slicer.mrmlScene:
            from KneeSegmentationLib.scene.logic import SegmentationLogic

            self._segmentation = SegmentationLogic(slicer.mrmlScene)
        return self._segmentation

    @property
    def training(self):
        """Qt-free logic of the correct-and-retrain loop; cases go to a folder beside Slicer's settings."""
        if self._training is None or self._training.scene is not slicer.mrmlScene:
            from KneeSegmentationLib.paths import training_cases_dir
            from KneeSegmentationLib.scene.training_logic import TrainingLogic

            settingsFolder = os.path.dirname(slicer.app.slicerUserSettingsFilePath)
            self._training = TrainingLogic(slicer.mrmlScene, dataset_dir=training_cases_dir(settingsFolder))
        return self._training

    def settings(self, parameters):
        from KneeSegmentationLib.scene.logic import roi_box_from_node
        from KneeSegmentationLib.segment.pipeline import SegmentationSettings

        return SegmentationSettings(
            model=parameters.modelPath or None,
            device=self.torchDevice(parameters.device),
            n4=parameters.n4,
            roi=roi_box_from_node(parameters.roi) if parameters.roi else None,
            tta=parameters.tta,
            uncertainty=parameters.uncertainty,
        )

    def torchDevice(self, device: Device) -> str:
        if device is Device.GPU:
            found = self.segmentation.devices_found()
            return "mps" if "mps" in found and "cuda" not in found else "cuda"  # else falls back with a warning
        return device.value

    def echoOf(self, parameters):
        from KneeSegmentationLib.scene.echoes import echo_count

        return parameters.echo if echo_count(parameters.inputVolume) > 1 else None

    def show3D(self, segmentationNode, visible: bool) -> None:
        """The segments as surfaces in the 3D views, or not (needs no torch)."""
        from KneeSegmentationLib.scene.segments import show_3d

        show_3d(segmentationNode, visible)

    def start(self, parameters, output=None, overwrite=False):
        """Starts a background run; poll the returned ``BackgroundRun`` and ``apply`` its result."""
        return self.segmentation.start(parameters.inputVolume, self.settings(parameters), self.echoOf(parameters),
                                       output, overwrite)

    def run(self, volumeNode, settings=None, outputNode=None, overwrite=False, echo=None):
        """Synchronous (blocks Slicer): returns the segmentation node."""
        return self.segmentation.run(volumeNode, settings, output_node=outputNode, overwrite=overwrite, echo=echo)


#
# KneeSegmentationTest
#


class KneeSegmentationTest(ScriptedLoadableModuleTest):
    """Runs the shared self-test bodies (KneeSegmentationLib.scene.selftests) on slicer.mrmlScene with the real
    sample and the bundled model; pytest runs the same bodies headless (Testing/Python/test_selftests.py)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        import unittest

        self.setUp()
        self.test_SampleData()
        self.setUp()
        try:
            self.test_SelfTest()
        except unittest.SkipTest as reason:  # runTest calls the tests directly, without unittest's runner
            self.delayDisplay(f"Self-test skipped: {reason}")

    def test_SampleData(self):
        """The registered sample loads from the extension folder, checksum-verified, like a direct read."""
        import numpy as np
        import SampleData

        registerSampleData()
        node = SampleData.downloadSample(resources.SAMPLE_NAME)
        self.assertIsNotNone(node)
        self.assertEqual(node.GetImageData().GetDimensions(), (256, 256, 24))
        reference = slicer.util.loadVolume(str(resources.knee_sample().path))
        self.assertTrue(np.array_equal(slicer.util.arrayFromVolume(node), slicer.util.arrayFromVolume(reference)))
        self.delayDisplay("Sample data OK")

    def test_SelfTest(self):
        missing = dependencies.missing_packages()
        if missing.any:  # e.g. on a build machine; the module offers the install on first use
            self.skipTest(f"not installed: {missing.describe()} (open the module and click Apply to install)")
        from KneeSegmentationLib.scene import selftests
        from KneeSegmentationLib.scene.logic import SegmentationLogic
        from KneeSegmentationLib.segment.pipeline import SegmentationSettings

        scene = slicer.mrmlScene
        volume = selftests.load_sample(scene, resources.knee_sample().path)
        logic = SegmentationLogic(scene)
        self.delayDisplay("Segmenting the sample (may take a minute on a CPU)")
        report = selftests.run_all(scene, logic, volume, SegmentationSettings(device="auto", n4=True),
                                   selftests.REAL_SAMPLE, slicer.app.temporaryPath)
        self.delayDisplay(f"Self-test passed: {report}")
