"""One ``kneeseg segment`` in less wall time: torch's import and the model load run beside the N4 fit.

A fresh process spends ~2 s importing torch and loading the model, and ~3 s fitting the N4 bias field, which
needs only SimpleITK (its C++ threads release the GIL). ``segment_overlapped`` starts the first in a thread,
does the second on the calling thread, then hands the corrected image to ``pipeline.run_segmentation`` with
N4 off: the result is the same as one ``run_segmentation`` with N4 on.

    result = segment_overlapped(image, settings, progress, cancel)
"""
from __future__ import annotations

import threading
import time
from dataclasses import replace

from ..progress import CancelToken, Progress, no_progress

N4_SHARE = 0.25  # of the progress bar, as in pipeline.STAGES


class ModelPrefetch:
    """Imports the pipeline (torch) and loads ``model`` in a daemon thread; ``result()`` waits for it."""

    def __init__(self, model) -> None:
        self._model, self._error, self.seconds = None, None, 0.0
        self._thread = threading.Thread(target=self._load, args=(model,), name="kneeseg-model", daemon=True)
        self._thread.start()

    def _load(self, model) -> None:
        t0 = time.perf_counter()
        try:
            from .pipeline import resolve_model

            self._model = resolve_model(model)
        except BaseException as error:  # noqa: BLE001 - re-raised on the caller's thread
            self._error = error
        self.seconds = time.perf_counter() - t0

    def result(self):
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._model


def segment_overlapped(image, settings, progress: Progress = no_progress, cancel: CancelToken | None = None):
    cancel = cancel or CancelToken()
    prefetch = ModelPrefetch(settings.model)
    timings: dict[str, float] = {}
    if settings.n4:
        from .n4 import n4_correct

        t0 = time.perf_counter()
        corrected = n4_correct(image, cancel=cancel,
                               progress=lambda f: progress(N4_SHARE * f, "N4 bias correction"))
        timings["n4"] = time.perf_counter() - t0
    else:
        corrected = image
    t0 = time.perf_counter()
    model = prefetch.result()
    timings["wait for model"] = time.perf_counter() - t0
    from .pipeline import run_segmentation

    result = run_segmentation(corrected, replace(settings, model=model, n4=False), progress, cancel)
    result.timings = {"import+load model (beside N4)": prefetch.seconds, **timings,
                      **{k: v for k, v in result.timings.items() if k != "load model"}}
    return result
