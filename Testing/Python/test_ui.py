"""The panel's Qt Designer file: well-formed, loadable by Qt (PySide6's QUiLoader, offscreen), and in step with
the module file (every ``self.ui.X`` exists with a sensible class; every parameter-node binding exists and uses
a widget that Slicer's ``connectGui`` can represent for that type).

Slicer's and CTK's widget classes are not known to a plain Qt. They must be declared as custom widgets in the
.ui (as Qt Designer does); the test checks that each is a known Slicer/CTK class and registers a placeholder
QWidget subclass of that name for the loader only."""
from __future__ import annotations

import ast
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UI_FILE = REPO / "Resources" / "UI" / "KneeSegmentation.ui"
MODULE_FILE = REPO / "KneeSegmentation" / "KneeSegmentation.py"
PARAMETER_NODE_CLASS = "KneeSegmentationParameterNode"

# Slicer/CTK widget classes the panel may use (they exist in Slicer 5.8's Python as slicer.X / ctk.X).
KNOWN_CUSTOM = {
    "qMRMLWidget", "qMRMLNodeComboBox", "qMRMLSubjectHierarchyComboBox", "qMRMLSegmentSelectorWidget",
    "ctkCollapsibleButton", "ctkCollapsibleGroupBox", "ctkSliderWidget", "ctkCheckBox", "ctkComboBox",
    "ctkPathLineEdit", "ctkDirectoryButton",
}
# Which widget classes Slicer's parameterNodeWrapper connectors accept for which annotated type.
CONNECTABLE = {
    "node": {"qMRMLNodeComboBox"},
    "bool": {"QCheckBox", "ctkCheckBox", "QPushButton"},
    "int": {"QSpinBox", "QSlider"},
    "float": {"QDoubleSpinBox", "ctkSliderWidget", "ctkDoubleSpinBox"},
    "enum": {"QComboBox", "ctkComboBox"},
    "str": {"QLineEdit", "QLabel"},
}
# Name suffix -> acceptable classes, for the names the module uses.
SENSIBLE = {
    "Button": {"QPushButton", "QToolButton", "ctkCollapsibleButton"},
    "Selector": {"qMRMLNodeComboBox", "qMRMLSubjectHierarchyComboBox"},
    "ComboBox": {"QComboBox", "ctkComboBox"},
    "Label": {"QLabel"},
    "CheckBox": {"QCheckBox", "ctkCheckBox"},
    "Bar": {"QProgressBar"},
}


def _tree() -> ET.ElementTree:
    return ET.parse(UI_FILE)


def ui_widgets() -> dict[str, str]:
    """objectName -> class of every widget in the .ui."""
    return {w.get("name"): w.get("class") for w in _tree().iter("widget")}


def ui_bindings() -> dict[str, tuple[str, str]]:
    """parameter name -> (widget name, widget class) from the ``SlicerParameterName`` properties."""
    out = {}
    for w in _tree().iter("widget"):
        for p in w.findall("property"):
            if p.get("name") == "SlicerParameterName":
                out[p.find("string").text] = (w.get("name"), w.get("class"))
    return out


def widget_properties(name: str) -> dict[str, str]:
    """The properties a widget of the .ui sets, as text (``"true"`` for a set bool)."""
    widget = next(w for w in _tree().iter("widget") if w.get("name") == name)
    return {p.get("name"): "".join(p.itertext()).strip() for p in widget.findall("property")}


def widgets_inside(name: str) -> set[str]:
    widget = next(w for w in _tree().iter("widget") if w.get("name") == name)
    return {w.get("name") for w in widget.iter("widget")} - {name}


def module_ui_names() -> set[str]:
    """Every X in ``self.ui.X`` in the module file."""
    names = set()
    for node in ast.walk(ast.parse(MODULE_FILE.read_text())):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "ui"
                and isinstance(node.value.value, ast.Name) and node.value.value.id == "self"):
            names.add(node.attr)
    return names


def parameter_kinds() -> dict[str, str]:
    """Fields of the parameter-node class in the module file and their kind (node/bool/int/enum/...)."""
    module = ast.parse(MODULE_FILE.read_text())
    enums = {c.name for c in module.body if isinstance(c, ast.ClassDef)
             and any(isinstance(b, ast.Attribute) and b.attr == "Enum" for b in c.bases)}
    cls = next(c for c in module.body if isinstance(c, ast.ClassDef) and c.name == PARAMETER_NODE_CLASS)
    kinds = {}
    for stmt in cls.body:
        if isinstance(stmt, ast.AnnAssign):
            type_name = ast.unparse(stmt.annotation)
            kinds[stmt.target.id] = ("node" if type_name.startswith("vtkMRML") else
                                     "enum" if type_name in enums else type_name)
    return kinds


def test_ui_is_well_formed_and_declares_its_custom_widgets():
    root = _tree().getroot()
    assert root.tag == "ui" and root.find("class").text == "KneeSegmentation"
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget", "the top widget must be a qMRMLWidget (setMRMLScene)"
    declared = {c.find("class").text for c in root.iter("customwidget")}
    used = set(ui_widgets().values())
    from PySide6 import QtWidgets

    for cls in used:
        assert hasattr(QtWidgets, cls) or cls in declared, f"{cls} is neither Qt nor a declared custom widget"
    assert declared <= KNOWN_CUSTOM, f"unknown Slicer/CTK classes: {declared - KNOWN_CUSTOM}"
    names = list(ui_widgets())
    assert len(names) == len(set(names)), "duplicate widget names"


def test_scene_reaches_every_mrml_widget():
    """Each qMRML widget must get the scene through a mrmlSceneChanged -> setMRMLScene connection."""
    receivers = {c.find("receiver").text for c in _tree().getroot().iter("connection")
                 if c.find("signal").text == "mrmlSceneChanged(vtkMRMLScene*)"}
    mrml = {n for n, c in ui_widgets().items() if c.startswith("qMRML") and c != "qMRMLWidget"}
    assert mrml and mrml <= receivers, f"no scene for {mrml - receivers}"


def test_every_name_the_module_uses_exists_with_a_sensible_class():
    widgets = ui_widgets()
    used = module_ui_names()
    assert {"applyButton", "cancelButton", "progressBar", "statusLabel", "openSegmentEditorButton",
            "show3DButton", "modelInfoLabel"} <= used
    for name in sorted(used):
        assert name in widgets, f"self.ui.{name} is not in {UI_FILE.name}"
        suffix = next((s for s in SENSIBLE if name.endswith(s)), None)
        assert suffix, f"self.ui.{name}: name does not say what it is"
        assert widgets[name] in SENSIBLE[suffix], f"{name} is a {widgets[name]}"


def test_parameter_node_bindings_match_the_module():
    kinds = parameter_kinds()
    bindings = ui_bindings()
    assert set(bindings) <= set(kinds), f"bound in the .ui but not parameters: {set(bindings) - set(kinds)}"
    # Parameters without a SlicerParameterName are synced by hand (dynamic lists): the echo and the model.
    assert set(kinds) - set(bindings) == {"echo", "modelPath"}
    for parameter, (widget, cls) in bindings.items():
        assert cls in CONNECTABLE[kinds[parameter]], f"{parameter} ({kinds[parameter]}) bound to {widget}, a {cls}"
        if cls == "QPushButton":  # Slicer's connector represents a bool by a button only if it is checkable
            assert widget_properties(widget).get("checkable") == "true", f"{widget} is not checkable"


def test_node_selectors_offer_the_annotated_node_types():
    module = ast.parse(MODULE_FILE.read_text())
    cls = next(c for c in module.body if isinstance(c, ast.ClassDef) and c.name == PARAMETER_NODE_CLASS)
    annotated = {s.target.id: ast.unparse(s.annotation) for s in cls.body if isinstance(s, ast.AnnAssign)}
    for w in _tree().iter("widget"):
        props = {p.get("name"): p for p in w.findall("property")}
        if w.get("class") != "qMRMLNodeComboBox" or "SlicerParameterName" not in props:
            continue
        parameter = props["SlicerParameterName"].find("string").text
        types = [s.text for s in props["nodeTypes"].iter("string")]
        assert types == [annotated[parameter]], f"{w.get('name')}: {types} vs {annotated[parameter]}"


def test_options_are_collapsed_and_the_model_line_stays_in_view():
    """What a radiologist needs first is open: the input, the model and its plain summary, the output, Apply,
    the result line, Show 3D. The run options wait in a section collapsed by default."""
    assert widget_properties("optionsCollapsibleButton").get("collapsed") == "true"
    for section in ("inputsCollapsibleButton", "outputsCollapsibleButton"):
        assert widget_properties(section).get("collapsed") != "true", f"{section} is collapsed"
    options = widgets_inside("optionsCollapsibleButton")
    assert {"roiSelector", "deviceComboBox", "n4CheckBox", "ttaCheckBox", "uncertaintyCheckBox"} <= options
    assert not {"modelComboBox", "modelInfoLabel", "installDependenciesButton"} & options
    assert {"modelComboBox", "modelInfoLabel"} <= widgets_inside("inputsCollapsibleButton")
    for collapsible in ("inputsCollapsibleButton", "optionsCollapsibleButton", "outputsCollapsibleButton",
                        "trainingCollapsibleButton"):
        assert not {"statusLabel", "show3DButton", "applyButton"} & widgets_inside(collapsible)


def test_show_3d_is_a_checked_toggle_bound_to_the_parameter_node():
    props = widget_properties("show3DButton")
    assert ui_widgets()["show3DButton"] == "QPushButton" and props["text"] == "Show 3D"
    assert props.get("checkable") == "true" and props.get("checked") == "true"  # as the parameter's default
    assert ui_bindings()["show3D"] == ("show3DButton", "QPushButton")
    assert ui_bindings()["tta"] == ("ttaCheckBox", "QCheckBox")


@pytest.fixture(scope="module")
def qt_app():
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6 import QtWidgets

    return QtWidgets.QApplication.instance() or QtWidgets.QApplication([])


def test_ui_loads_in_qt(qt_app):
    from PySide6 import QtCore, QtUiTools, QtWidgets

    loader = QtUiTools.QUiLoader()
    declared = {c.find("class").text for c in _tree().getroot().iter("customwidget")}
    for name in declared:
        loader.registerCustomWidget(type(name, (QtWidgets.QWidget,), {}))  # placeholder, for this test only
    file = QtCore.QFile(str(UI_FILE))
    assert file.open(QtCore.QFile.ReadOnly)
    try:
        root = loader.load(file)
    finally:
        file.close()
    assert root is not None, loader.errorString()
    loaded = {w.objectName(): w for w in root.findChildren(QtWidgets.QWidget)}
    for name, cls in ui_widgets().items():
        if name == root.objectName():
            continue
        assert name in loaded, f"{name} did not load"
        assert loaded[name].metaObject().className() == cls, f"{name}: {loaded[name].metaObject().className()}"
    assert loaded["applyButton"].text() == "Apply" and not loaded["applyButton"].isEnabled()
    assert loaded["n4CheckBox"].isChecked()  # N4 on by default, as in the parameter node
    assert loaded["ttaCheckBox"].isChecked()  # the mirrored pass is on by default, as in the parameter node
    show3d = loaded["show3DButton"]
    assert show3d.isCheckable() and show3d.isChecked() and not show3d.isEnabled()  # enabled once there is a result
    root.deleteLater()
