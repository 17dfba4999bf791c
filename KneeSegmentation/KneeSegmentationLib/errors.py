"""Exceptions the library raises. Front ends show ``str(error)`` to the user as it is, so every message
says what is wrong and, where possible, what to do."""
from __future__ import annotations


class KneeSegError(Exception):
    """Base class of every error the library raises on purpose."""


class InputError(KneeSegError):
    """The image (or ROI, or labelmap) cannot be segmented: wrong dimensionality, empty, constant, NaN..."""


class ModelError(KneeSegError):
    """A model file is missing, malformed, fails its checksum, or is of a refused kind (pickle)."""


class Cancelled(KneeSegError):
    """The user cancelled the run. Nothing was written and the scene is unchanged."""


class Interrupted(Cancelled):
    """Interrupted while writing outputs: ``str()`` says what was written and what was not
    (``outputs.OutputPlan``)."""


class DatasetError(KneeSegError):
    """A training dataset or saved case is missing, malformed or inconsistent."""
