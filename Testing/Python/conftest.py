"""Shared fixtures. Tests run against the real library and real MRML (slicer-core); nothing is mocked."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # phantom.py, tinymodel.py

from tinymodel import TEST_MODELS  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_root(tmp_path_factory) -> Path:
    """A copy of the test models root (tiny-phantom/v1, trained on the phantom by tinymodel.py), so tests
    may add versions without touching the repository."""
    import shutil

    root = tmp_path_factory.mktemp("models")
    shutil.copytree(TEST_MODELS, root, dirs_exist_ok=True)
    return root


@pytest.fixture(scope="session")
def tiny_model(tiny_model_root) -> Path:
    return tiny_model_root / "tiny-phantom" / "v1"


@pytest.fixture()
def scene():
    from KneeSegmentationLib.scene.mrml import create_scene

    return create_scene()
