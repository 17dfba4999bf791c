"""The Slicer extension's files: CMake lists in step with the tree, extension metadata, and the module file's
shape (four classes, the only Qt/Slicer-application importer, names it takes from the library exist, loads
without torch). The module file is read with ``ast``: it needs the Slicer application to run."""
from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "KneeSegmentation"
MODULE_FILE = MODULE_DIR / "KneeSegmentation.py"
LIB_DIR = MODULE_DIR / "KneeSegmentationLib"
MODULE_CMAKE = MODULE_DIR / "CMakeLists.txt"
TOP_CMAKE = REPO / "CMakeLists.txt"
# Imports that need the Slicer application (Qt); only the module file may use them.
APP_MODULES = ("qt", "ctk", "slicer.ScriptedLoadableModule", "slicer.parameterNodeWrapper", "slicer.i18n",
               "PyTorchUtils", "SampleData")
# Never installed: editor and OS leftovers.
IGNORED = re.compile(r"(^|/)(\.|__pycache__/)|\.pyc$|~$")


def cmake_list(text: str, name: str, variables: dict[str, str]) -> list[str]:
    match = re.search(rf"set\(\s*{name}\s+(.*?)\)", text, re.S)
    assert match, f"set({name} ...) not found"
    items = [line.split("#")[0].strip() for line in match.group(1).splitlines()]
    out = []
    for item in filter(None, items):
        for var, value in variables.items():
            item = item.replace("${" + var + "}", value)
        out.append(item)
    return out


def listed() -> dict[str, list[str]]:
    text = MODULE_CMAKE.read_text()
    variables = {"MODULE_NAME": re.search(r"set\(MODULE_NAME\s+(\w+)\)", text).group(1)}
    return {name: cmake_list(text, name, variables)
            for name in ("MODULE_PYTHON_SCRIPTS", "TRAINER_PYTHON_SCRIPTS", "MODULE_PYTHON_RESOURCES")}


def tree_files(folder: Path, pattern: str) -> set[str]:
    """Files under ``folder`` as paths relative to the module folder (``../`` for files outside it)."""
    out = set()
    for path in folder.glob(pattern):
        rel = path.relative_to(REPO).as_posix()
        if path.is_file() and not IGNORED.search(rel):
            out.add(Path(path).resolve().relative_to(MODULE_DIR).as_posix() if path.is_relative_to(MODULE_DIR)
                    else "../" + rel)
    return out


def _diff(listed_items: list[str], actual: set[str], what: str) -> str:
    missing = sorted(actual - set(listed_items))
    extra = sorted(set(listed_items) - actual)
    return f"{what}: not listed in {MODULE_CMAKE.relative_to(REPO)}: {missing}; listed but absent: {extra}"


def test_module_scripts_list_every_library_file():
    lists = listed()
    actual = {"KneeSegmentation.py"} | tree_files(LIB_DIR, "**/*.py")
    assert set(lists["MODULE_PYTHON_SCRIPTS"]) == actual, _diff(lists["MODULE_PYTHON_SCRIPTS"], actual, "scripts")
    assert len(lists["MODULE_PYTHON_SCRIPTS"]) == len(actual), "a script is listed twice"


def test_trainer_scripts_are_listed():
    lists = listed()
    actual = tree_files(REPO / "trainer", "**/*.py")
    assert set(lists["TRAINER_PYTHON_SCRIPTS"]) == actual, _diff(lists["TRAINER_PYTHON_SCRIPTS"], actual, "trainer")


def test_every_resource_is_listed_and_exists():
    lists = listed()
    # Screenshots are the extension catalogue's (EXTENSION_SCREENSHOTURLS), not the module's: not installed.
    actual = {f for f in tree_files(REPO / "Resources", "**/*") if not f.startswith("../Resources/Screenshots/")}
    assert set(lists["MODULE_PYTHON_RESOURCES"]) == actual, _diff(lists["MODULE_PYTHON_RESOURCES"], actual, "resources")
    for required in ("../Resources/UI/KneeSegmentation.ui", "../Resources/Icons/KneeSegmentation.png",
                     "../Resources/SampleData/MESE_T2_knee_echo1.nrrd",
                     "../Resources/SampleData/MESE_T2_knee_echo1.nrrd.sha256"):
        assert required in lists["MODULE_PYTHON_RESOURCES"], required


def test_listed_files_exist():
    for items in listed().values():
        for item in items:
            assert (MODULE_DIR / item).is_file(), f"{item} is listed but does not exist"


def test_module_cmake_builds_a_scripted_module_with_generic_tests():
    text = MODULE_CMAKE.read_text()
    call = re.search(r"slicerMacroBuildScriptedModule\((.*?)\)", text, re.S).group(1)
    for keyword in ("NAME ${MODULE_NAME}", "SCRIPTS ${MODULE_PYTHON_SCRIPTS} ${TRAINER_PYTHON_SCRIPTS}",
                    "RESOURCES ${MODULE_PYTHON_RESOURCES}", "WITH_GENERIC_TESTS"):
        assert keyword in call, keyword
    assert "install(FILES" in text, "files outside the module folder need their own install rule"


def test_extension_metadata():
    text = TOP_CMAKE.read_text()
    meta = dict(re.findall(r'set\((EXTENSION_\w+)\s+"([^"]*)"\)', text))
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert meta.get(key), f"{key} missing"
    assert meta["EXTENSION_CATEGORY"] == "Segmentation"
    assert meta["EXTENSION_DEPENDS"] in ("NA", "PyTorch")
    for key in ("EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        for url in meta[key].split():
            file = url.split("/main/")[-1]
            assert (REPO / file).is_file(), f"{key} points to {file}, which is not in the tree"
    assert "add_subdirectory(KneeSegmentation)" in text
    assert "include(${Slicer_EXTENSION_GENERATE_CONFIG})" in text and "include(${Slicer_EXTENSION_CPACK})" in text


def test_icon_is_128_px():
    import matplotlib.image

    height, width = matplotlib.image.imread(REPO / "Resources" / "Icons" / "KneeSegmentation.png").shape[:2]
    assert (width, height) == (128, 128)


def _module_tree() -> ast.Module:
    return ast.parse(MODULE_FILE.read_text(), filename=str(MODULE_FILE))


def test_module_file_defines_the_four_classes():
    classes = {c.name: [ast.unparse(b) for b in c.bases] for c in _module_tree().body if isinstance(c, ast.ClassDef)}
    assert "ScriptedLoadableModule" in classes["KneeSegmentation"]
    assert "ScriptedLoadableModuleWidget" in classes["KneeSegmentationWidget"]
    assert "ScriptedLoadableModuleLogic" in classes["KneeSegmentationLogic"]
    assert "ScriptedLoadableModuleTest" in classes["KneeSegmentationTest"]


def _app_uses(tree: ast.Module) -> list[str]:
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Attribute) and node.attr == "app" and ast.unparse(node.value) == "slicer":
            names = ["slicer.app"]
        found += [n for n in names if n == "slicer.app" or any(n == m or n.startswith(m + ".") for m in APP_MODULES)]
    return found


def test_only_the_module_file_imports_qt_ctk_or_the_slicer_application():
    assert _app_uses(_module_tree()), "the check itself must see the module file's Qt imports"
    offenders = {}
    for path in [*LIB_DIR.rglob("*.py"), *(REPO / "trainer").rglob("*.py"), *(REPO / "scripts").rglob("*.py")]:
        uses = _app_uses(ast.parse(path.read_text(), filename=str(path)))
        if uses:
            offenders[path.relative_to(REPO).as_posix()] = uses
    assert not offenders, offenders


def test_names_the_module_takes_from_the_library_exist():
    """Every ``from KneeSegmentationLib.x import y`` and ``x.y`` (for imported library modules) resolves."""
    imported_modules = {}
    checked = 0
    tree = _module_tree()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("KneeSegmentationLib"):
            for alias in node.names:
                if (MODULE_DIR / node.module.replace(".", "/") / f"{alias.name}.py").is_file():
                    module = importlib.import_module(f"{node.module}.{alias.name}")
                    imported_modules[alias.asname or alias.name] = module
                else:
                    assert hasattr(importlib.import_module(node.module), alias.name), f"{node.module}.{alias.name}"
                checked += 1
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in imported_modules:
            assert hasattr(imported_modules[node.value.id], node.attr), f"{node.value.id}.{node.attr}"
            checked += 1
    assert checked > 10


def test_module_top_level_imports_load_without_torch():
    """The module must load in a Slicer without torch (it offers to install it): its top-level library imports
    may not pull torch or safetensors."""
    top = [n for n in _module_tree().body if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("Knee")]
    statements = "\n".join(ast.unparse(n) for n in top)
    assert statements
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'safetensors'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        f"sys.path.insert(0, {str(MODULE_DIR)!r})\n"
        f"{statements}\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_dependency_check_sees_what_is_missing(monkeypatch):
    from KneeSegmentationLib import dependencies

    assert not dependencies.missing_packages().any  # the test environment has torch and safetensors
    monkeypatch.setattr(dependencies, "importable", lambda name: name != "torch")
    missing = dependencies.missing_packages()
    assert missing.torch and missing.pip == () and missing.describe() == "PyTorch"
    constraints = dependencies.protected_constraints()
    import numpy

    assert f"numpy=={numpy.__version__}" in constraints and "SimpleITK==" in constraints
    assert dependencies.pip_arguments(["safetensors>=0.4"], "/tmp/c.txt") == \
        ["safetensors>=0.4", "--constraint", "/tmp/c.txt"]


def test_sample_registration_data_points_at_the_bundled_sample():
    from KneeSegmentationLib import resources
    from KneeSegmentationLib.files import sha256_of

    sample = resources.knee_sample()
    assert sample.uri.startswith("file://") and sample.path.is_file() and sample.thumbnail.is_file()
    assert sample.checksum == "SHA256:" + sha256_of(sample.path)
    assert resources.ui_file().is_file() and resources.icon_file().is_file()


@pytest.mark.parametrize("name", ["KneeSegmentation.py"])
def test_module_file_is_valid_python(name):
    compile((MODULE_DIR / name).read_text(), name, "exec")
