"""Where the extension's resources are, in the source tree and in an installed extension alike.

The source tree keeps ``Resources/`` beside ``KneeSegmentation/`` (the module and its library), and the
extension build copies the resources to the same relative place (``<lib>/Slicer-X.Y/Resources`` beside
``qt-scripted-modules/``; see ``KneeSegmentation/CMakeLists.txt``). So one rule, two levels above this
package, finds them in both (``paths.resources_root``; ``paths.bundled_models_root`` is its ``Models``).
A ``pip install`` of the project carries the same folder inside the package (``KneeSegmentationLib/Resources``),
the fallback.
No Qt here, so the sample registration data can be tested outside Slicer.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import KneeSegError
from .paths import resources_root

MODULE_NAME = "KneeSegmentation"
SAMPLE_CATEGORY = "KneeSegmentation"
SAMPLE_NAME = "KneeMESE"  # the node name and the name shown in the Sample Data module
SAMPLE_FILE = "MESE_T2_knee_echo1.nrrd"
SAMPLE_THUMBNAIL = "KneeMESE.png"
CHECKSUM_SUFFIX = ".sha256"


def ui_file() -> Path:
    return resources_root() / "UI" / f"{MODULE_NAME}.ui"


def icon_file() -> Path:
    return resources_root() / "Icons" / f"{MODULE_NAME}.png"


@dataclass(frozen=True)
class SampleEntry:
    """Arguments for ``SampleData.SampleDataLogic.registerCustomSampleDataSource``."""

    category: str
    name: str
    path: Path
    sha256: str
    thumbnail: Path

    @property
    def uri(self) -> str:
        return self.path.as_uri()  # file:// — loaded from the extension's own folder, no internet

    @property
    def checksum(self) -> str:
        return f"SHA256:{self.sha256}"


def knee_sample(root: Path | None = None) -> SampleEntry:
    """The bundled real knee MRI and its published SHA-256 (from the ``.sha256`` file beside it)."""
    root = root or resources_root()
    path = root / "SampleData" / SAMPLE_FILE
    checksum_file = path.with_name(path.name + CHECKSUM_SUFFIX)
    if not path.is_file() or not checksum_file.is_file():
        raise KneeSegError(f"the sample image or its checksum file is missing from {path.parent}; "
                           "reinstall the extension")
    digest = checksum_file.read_text(encoding="utf-8").split()[0].lower()
    return SampleEntry(SAMPLE_CATEGORY, SAMPLE_NAME, path, digest, root / "Icons" / SAMPLE_THUMBNAIL)
