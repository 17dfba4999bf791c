#!/usr/bin/env bash
# Checks KneeSegmentation/CMakeLists.txt with Slicer's own slicerMacroBuildScriptedModule and CTK's
# ctkMacroCompilePythonScript (read from source checkouts; nothing of them is copied into this repository):
# configure, build (copy + byte-compile), install into a temporary prefix, then check that the installed tree
# has the source tree's layout (library, Resources/ and trainer/ beside qt-scripted-modules/) and that the
# library finds its resources, the sample and the trainer there. Needs cmake and ninja; no Slicer build.
#
#   bash scripts/check_extension_build.sh /path/to/Slicer /path/to/CTK
set -euo pipefail

SLICER_SRC=${1:?usage: $0 SLICER_SOURCE_DIR CTK_SOURCE_DIR}
CTK_SRC=${2:?usage: $0 SLICER_SOURCE_DIR CTK_SOURCE_DIR}
REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

mkdir -p "$WORK/cmake"
cp "$SLICER_SRC/CMake/SlicerMacroBuildScriptedModule.cmake" "$WORK/cmake/"
for f in ctkMacroCompilePythonScript.cmake ctkMacroParseArguments.cmake ctk_compile_python_scripts.cmake.in \
         ctkFunctionExtractOptimizedLibrary.cmake; do
  cp "$CTK_SRC/CMake/$f" "$WORK/cmake/"
done

# The variables an extension build gets from Slicer's UseSlicer.cmake, for a Slicer 5.8 layout.
cat > "$WORK/CMakeLists.txt" <<EOF
cmake_minimum_required(VERSION 3.16)
project(KneeSegmentationBuildCheck NONE)
set(CTK_CMAKE_DIR \${CMAKE_CURRENT_SOURCE_DIR}/cmake)
list(APPEND CMAKE_MODULE_PATH \${CTK_CMAKE_DIR})
include(ctkFunctionExtractOptimizedLibrary)
include(ctkMacroCompilePythonScript)
include(SlicerMacroBuildScriptedModule)
set(Slicer_USE_PYTHONQT ON)
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR "lib/Slicer-5.8/qt-scripted-modules")
set(Slicer_INSTALL_ROOT "./")
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR "\${Slicer_INSTALL_ROOT}\${Slicer_QTSCRIPTEDMODULES_LIB_DIR}")
set(PYTHONINTERP_FOUND TRUE)
set(PYTHONLIBS_FOUND TRUE)
set(PYTHON_EXECUTABLE "$PYTHON")
set(PYTHON_LIBRARIES "/nonexistent/libpython3.so")
set(BUILD_TESTING OFF)
macro(SlicerMacroTranslation)
endmacro()
add_subdirectory("$REPO/KneeSegmentation" KneeSegmentation)
EOF

cmake -S "$WORK" -B "$WORK/build" -G Ninja -DCMAKE_INSTALL_PREFIX="$WORK/install" > "$WORK/configure.log"
cmake --build "$WORK/build" > "$WORK/build.log"
cmake --install "$WORK/build" > "$WORK/install.log"

MODULES="$WORK/install/lib/Slicer-5.8/qt-scripted-modules"
"$PYTHON" - "$MODULES" "$REPO" <<'EOF'
import sys
from pathlib import Path

modules, repo = Path(sys.argv[1]), Path(sys.argv[2])
sys.path.insert(0, str(modules))
from KneeSegmentationLib import paths, resources
from KneeSegmentationLib.learn import children

installed = {p.relative_to(modules.parent).as_posix() for p in modules.parent.rglob("*")
             if p.is_file() and p.suffix != ".pyc"}
expected = {"qt-scripted-modules/" + p.relative_to(repo / "KneeSegmentation").as_posix()
            for p in (repo / "KneeSegmentation").rglob("*.py") if "__pycache__" not in p.parts}
# Resources the module reads (not the catalogue's screenshots) and the trainer's code (not its README).
expected |= {p.relative_to(repo).as_posix() for d in ("Resources", "trainer") for p in (repo / d).rglob("*")
             if p.is_file() and "__pycache__" not in p.parts and not p.name.startswith(".") and p.suffix != ".pyc"
             and "Screenshots" not in p.parts and not (d == "trainer" and p.suffix != ".py")}
assert installed == expected, f"missing: {sorted(expected - installed)}; extra: {sorted(installed - expected)}"
assert resources.ui_file().is_file() and resources.icon_file().is_file()
assert resources.knee_sample().path.is_file()
assert paths.bundled_models_root() == modules.parent / "Resources" / "Models"
assert children.trainer_parent() == modules.parent
print(f"OK: {len(installed)} files installed with the source tree's layout under {modules.parent.name}/")
EOF
