"""What a plain ``pip install .`` needs: resources as package data, and a CLI path free of vtk and slicer."""
from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from KneeSegmentationLib import paths, resources

ROOT = Path(__file__).resolve().parents[2]


def test_package_data_carries_models_and_sample():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    tool = config["tool"]["setuptools"]
    assert tool["package-dir"]["KneeSegmentationLib.Resources"] == "Resources"
    patterns = tool["package-data"]["KneeSegmentationLib.Resources"]
    files = {p.relative_to(ROOT / "Resources") for pattern in patterns for p in (ROOT / "Resources").glob(pattern)
             if p.is_file()}
    models = {p.relative_to(ROOT / "Resources") for p in (ROOT / "Resources" / "Models").rglob("*") if p.is_file()}
    assert models and models <= files
    assert Path("SampleData") / resources.SAMPLE_FILE in files
    assert any(d.startswith("pynrrd") for d in config["project"]["dependencies"])
    assert "dicom" in config["project"]["optional-dependencies"]


def test_installed_layout_is_found(tmp_path, monkeypatch):
    # A pip install puts the library in site-packages with Resources/ inside it and nothing two levels up.
    lib = tmp_path / "site-packages" / "KneeSegmentationLib"
    (lib / "Resources" / "Models").mkdir(parents=True)
    monkeypatch.setattr(paths, "__file__", str(lib / "paths.py"))  # the rule lives in paths.resources_root
    assert resources.resources_root() == lib / "Resources"


def test_segment_imports_no_vtk_slicer_or_matplotlib(tiny_model, tmp_path):
    from phantom import phantom
    import SimpleITK as sitk

    image, _ = phantom(size=(48, 48, 32), spacing=(2.0, 2.0, 2.5))
    sitk.WriteImage(image, str(tmp_path / "k.nrrd"))
    code = (f"import sys; from KneeSegmentationLib.cli.main import main; "
            f"assert 'torch' not in sys.modules, 'torch at import'; "
            f"rc = main(['segment', {str(tmp_path / 'k.nrrd')!r}, '-o', {str(tmp_path / 'k.seg.nrrd')!r}, "
            f"'--statistics', {str(tmp_path / 'k.csv')!r}, '--model', {str(tiny_model)!r}, '--no-n4', '-q']); "
            f"bad = sorted(m for m in ('vtk', 'slicer', 'matplotlib') if m in sys.modules); "
            f"assert rc == 0 and not bad, (rc, bad)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "k.seg.nrrd").is_file()
