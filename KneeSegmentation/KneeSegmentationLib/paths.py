"""Every folder the project reads or writes outside a command's own arguments, and the environment variable that
moves it, in one place (as nnU-Net's ``paths.py``).

=====================  ===========================  ===============================================================
root                   environment variable         default
=====================  ===========================  ===============================================================
resources              (none)                       ``Resources/`` of the checkout, extension or pip package
bundled models         (none)                       ``<resources>/Models``
user folder            (none)                       ``~/.kneesegmentation``
user models            ``$KNEESEG_USER_MODELS``     ``<user folder>/Models`` (retrained versions, ``selection.json``)
training cases         ``$KNEESEG_DATASET``         ``<Slicer settings>/KneeSegmentation/TrainingCases``, else
                                                    ``<user folder>/TrainingCases``
synthesis dataset      ``$KNEESEG_SYNTH_DATASET``   ``<user folder>/SynthDataset`` (``python -m trainer prepare``)
download cache         ``$KNEESEG_CACHE``           ``~/.cache/kneesegmentation`` (the trainer's mskt sdist)
=====================  ===========================  ===============================================================

A variable set to an empty string counts as unset; ``~`` in a value is expanded. A root that cannot be found
(no home folder to put it in) or that names a file raises a ``KneeSegError`` saying which root it is and how
to move it. Nothing here creates a folder: whoever writes into a root does that.
"""
from __future__ import annotations

import os
from pathlib import Path

from .errors import KneeSegError

USER_MODELS_ENV = "KNEESEG_USER_MODELS"
DATASET_ENV = "KNEESEG_DATASET"
SYNTH_DATASET_ENV = "KNEESEG_SYNTH_DATASET"
CACHE_ENV = "KNEESEG_CACHE"
USER_FOLDER_NAME = ".kneesegmentation"
DATASET_FOLDER = "TrainingCases"


class RootError(KneeSegError):
    """A root folder cannot be used (no home folder, or the path names a file)."""


def _home(what: str, env: str | None) -> Path:
    try:
        return Path.home()
    except (RuntimeError, KeyError) as e:  # no $HOME and no password entry (a bare container, a service account)
        how = f"set ${env} to a folder" if env else "set $HOME"
        raise RootError(f"no home folder to keep {what} in ({e}); {how}") from e


def _root(what: str, env: str | None, default) -> Path:
    value = os.environ.get(env, "") if env else ""
    path = Path(value).expanduser() if value else default()
    if path.exists() and not path.is_dir():
        where = f"${env} names" if value else "the default is"
        raise RootError(f"{what}: {where} {path}, which is a file, not a folder"
                        + (f"; set ${env} to a folder" if env else ""))
    return path


def resources_root() -> Path:
    """``Resources/`` two levels above this package (source tree, Slicer extension), else the copy that
    ``pip install`` puts inside the package (``KneeSegmentationLib/Resources``, see pyproject.toml)."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parents[1] / "Resources", here / "Resources"):
        if (candidate / "Models").is_dir():
            return candidate
    return here.parents[1] / "Resources"


def bundled_models_root() -> Path:
    """``Resources/Models`` of this checkout, installed extension or pip-installed package."""
    return resources_root() / "Models"


def user_folder() -> Path:
    """``~/.kneesegmentation``: the default parent of the user models, training cases and synthesis dataset."""
    return _home("the user models, training cases and synthesis dataset", None) / USER_FOLDER_NAME


def user_models_root() -> Path:
    """Where retrained models (and ``selection.json``) go: ``$KNEESEG_USER_MODELS`` or ``~/.kneesegmentation/Models``."""
    return _root("the user models folder", USER_MODELS_ENV,
                 lambda: _home("the user models", USER_MODELS_ENV) / USER_FOLDER_NAME / "Models")


def training_cases_dir(settings_dir: Path | str | None = None) -> Path:
    """Where corrected cases go: ``$KNEESEG_DATASET``; else ``<settings_dir>/KneeSegmentation/TrainingCases``
    (the module passes the folder of Slicer's user settings); else ``~/.kneesegmentation/TrainingCases``."""
    def default() -> Path:
        if settings_dir is not None:
            return Path(settings_dir) / "KneeSegmentation" / DATASET_FOLDER
        return _home("the training cases", DATASET_ENV) / USER_FOLDER_NAME / DATASET_FOLDER

    return _root("the training cases folder", DATASET_ENV, default)


def synthetic_dataset_dir() -> Path:
    """The trainer's prepared synthesis dataset mixed into fine-tuning: ``$KNEESEG_SYNTH_DATASET`` or
    ``~/.kneesegmentation/SynthDataset`` (made once with ``python -m trainer prepare --out …``)."""
    return _root("the synthesis dataset", SYNTH_DATASET_ENV,
                 lambda: _home("the synthesis dataset", SYNTH_DATASET_ENV) / USER_FOLDER_NAME / "SynthDataset")


def missing_synthetic_dataset(path: Path) -> str:
    """What to do when the synthesis dataset at ``path`` has not been made."""
    return (f"the synthesis dataset {path} is missing; make it once with `python -m trainer prepare --out {path}` "
            f"(or set ${SYNTH_DATASET_ENV})")


def cache_dir() -> Path:
    """The trainer's download cache: ``$KNEESEG_CACHE`` if set, else ``~/.cache/kneesegmentation``."""
    return _root("the download cache", CACHE_ENV,
                 lambda: _home("the download cache", CACHE_ENV) / ".cache" / "kneesegmentation")
