"""Progress reporting and cancellation shared by the pipeline, the CLI, the Slicer module and the trainer.

Long work takes a ``Progress`` callback ``(fraction, stage)`` and a ``CancelToken``; it calls
``token.check()`` often, which raises ``Cancelled``. Both are plain objects so they cross threads cheaply.
"""
from __future__ import annotations

import threading
from typing import Callable, Protocol

from .errors import Cancelled


class Progress(Protocol):
    def __call__(self, fraction: float, stage: str) -> None: ...


def no_progress(fraction: float, stage: str) -> None:
    """Default progress sink: ignores reports."""


class CancelToken:
    """Thread-safe cancel flag. ``cancel()`` from any thread; ``check()`` in the worker raises ``Cancelled``."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise Cancelled("Cancelled by the user; nothing was changed.")


class LinkedToken(CancelToken):
    """A token cancelled by its parent or by its own ``cancel()``: a run stops a sub-task of its own (N4, when
    the model loading beside it fails) without setting the caller's token."""

    def __init__(self, parent: CancelToken) -> None:
        super().__init__()
        self._parent = parent

    @property
    def cancelled(self) -> bool:
        return self._parent.cancelled or super().cancelled

    def check(self) -> None:
        self._parent.check()
        super().check()


class StageProgress:
    """Maps the progress of one stage onto its share of the whole run, so stages report 0..1 locally."""

    def __init__(self, progress: Progress, stages: dict[str, float]) -> None:
        total = sum(stages.values())
        self._progress = progress
        self._start: dict[str, float] = {}
        self._width: dict[str, float] = {}
        acc = 0.0
        for name, weight in stages.items():
            self._start[name] = acc / total
            self._width[name] = weight / total
            acc += weight

    def stage(self, name: str) -> Callable[[float], None]:
        """Returns ``report(local_fraction)`` for stage ``name``."""
        start, width = self._start[name], self._width[name]

        def report(local: float) -> None:
            self._progress(start + width * min(max(local, 0.0), 1.0), name)

        report(0.0)
        return report
