"""What runs before torch is installed, checked in a fresh interpreter: the commands that only read model cards
(``models``, ``info``, ``select``), the echo list of the Slicer module (``echoes``) and its model picker's
records (``choices``)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import KneeSegmentationLib

LIB_PARENT = Path(KneeSegmentationLib.__file__).resolve().parents[1]
PROBE = """
import json, sys
from KneeSegmentationLib.cli import main as cli
codes = [cli.main(argv) for argv in json.loads(sys.argv[1])]
print(json.dumps({"codes": codes, "loaded": sorted(m for m in ("torch", "safetensors") if m in sys.modules)}))
"""


def _run_fresh(commands: list[list[str]], user_models: Path) -> dict:
    env = {**os.environ, "KNEESEG_USER_MODELS": str(user_models),
           "PYTHONPATH": os.pathsep.join([str(LIB_PARENT), str(LIB_PARENT.parent)])}
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(commands)], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_models_info_and_select_do_not_import_torch(tiny_model, tmp_path):
    user = tmp_path / "user"
    copy = user / "tiny-phantom" / "v1"
    shutil.copytree(tiny_model, copy)
    result = _run_fresh([["models"], ["info"], ["info", str(copy), "--json"], ["select", str(copy)], ["models"]], user)
    assert result == {"codes": [0, 0, 0, 0, 0], "loaded": []}
    assert json.loads((user / "selection.json").read_text())["tag"] == "tiny-phantom/v1"


def test_models_lists_devices_only_when_asked(tmp_path):
    result = _run_fresh([["models", "--devices"]], tmp_path)
    assert result["codes"] == [0] and "torch" in result["loaded"]


def test_the_echoes_of_a_multi_echo_volume_are_counted_without_torch():
    code = """
import sys
import numpy as np
from KneeSegmentationLib.scene.echoes import FRAME_LABELS_ATTRIBUTE, echo_count, echo_labels
from KneeSegmentationLib.scene.mrml import create_scene
scene = create_scene()
multi = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode")
from slicer import util
util.updateVolumeFromArray(multi, np.zeros((4, 5, 6, 3), np.float32))
multi.SetAttribute(FRAME_LABELS_ATTRIBUTE, "6.3,12.6,18.9")
print(echo_count(multi), echo_labels(multi)[2], "torch" in sys.modules)
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(LIB_PARENT), str(LIB_PARENT.parent)])}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "3 Echo 3 (18.9) False"


def test_the_model_pickers_records_are_built_without_torch(tiny_model, tmp_path):
    code = """
import sys
from pathlib import Path
from KneeSegmentationLib.scene.choices import model_choices
[choice] = model_choices([Path(sys.argv[1])], Path(sys.argv[2]))
print(choice.label, choice.is_default, "torch" in sys.modules)
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(LIB_PARENT), str(LIB_PARENT.parent)])}
    proc = subprocess.run([sys.executable, "-c", code, str(tiny_model.parents[1]), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "tiny-phantom v1 True False"
