"""Which Python packages the segmentation needs inside Slicer, which are missing, and how to install them
without touching the packages Slicer itself ships.

Slicer bundles numpy, vtk and SimpleITK built for its own Python; a ``pip install`` that upgrades any of them
can break Slicer. So every install we run is given a pip *constraints* file that pins them at the versions
already present: pip then refuses, rather than silently replaces them. torch is installed through the PyTorch
extension's ``PyTorchUtils`` when it is there (it picks the right CPU/CUDA build for the machine); the module
file does the asking and the installing, this file only decides what to ask for. No Qt, no torch import here,
so the module can call it before torch exists.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass

# Import name -> pip requirement. torch is listed separately because PyTorchUtils installs it when possible.
TORCH_REQUIREMENT = "torch>=2.0"
PIP_REQUIREMENTS = {"safetensors": "safetensors>=0.4"}
# Distributions that Slicer ships and that no install of ours may replace.
PROTECTED_DISTRIBUTIONS = ("numpy", "vtk", "SimpleITK")


@dataclass(frozen=True)
class MissingPackages:
    torch: bool
    pip: tuple[str, ...]  # requirements to pip-install (besides torch)

    @property
    def any(self) -> bool:
        return self.torch or bool(self.pip)

    def describe(self) -> str:
        names = (["PyTorch"] if self.torch else []) + [r.split(">")[0].split("=")[0] for r in self.pip]
        return ", ".join(names)


def importable(name: str) -> bool:
    """True if ``import name`` would find a module (without importing it: importing torch takes seconds)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def missing_packages() -> MissingPackages:
    return MissingPackages(
        torch=not importable("torch"),
        pip=tuple(req for name, req in PIP_REQUIREMENTS.items() if not importable(name)),
    )


def protected_constraints() -> str:
    """pip constraints text pinning the installed versions of Slicer's own numpy, vtk and SimpleITK."""
    lines = []
    for dist in PROTECTED_DISTRIBUTIONS:
        try:
            lines.append(f"{dist}=={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            continue  # not installed as a distribution (e.g. built into Slicer): nothing pip could overwrite
    return "\n".join(lines) + ("\n" if lines else "")


def pip_arguments(requirements: tuple[str, ...] | list[str], constraints_file: str) -> list[str]:
    """Arguments for ``slicer.util.pip_install`` (a list, so paths with spaces survive)."""
    return [*requirements, "--constraint", constraints_file]
