"""Shared fixtures. Tests run against the real library and real MRML (slicer-core); nothing is mocked."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # phantom.py, tinymodel.py

from tinymodel import train_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_root(tmp_path_factory) -> Path:
    """A models root holding one tiny model trained on the phantom (trained once per session, ~10 s)."""
    root = tmp_path_factory.mktemp("models")
    train_tiny_model(root)
    return root


@pytest.fixture(scope="session")
def tiny_model(tiny_model_root) -> Path:
    return tiny_model_root / "tiny-phantom" / "v1"


@pytest.fixture()
def scene():
    from KneeSegmentationLib.mrml import create_scene

    return create_scene()
