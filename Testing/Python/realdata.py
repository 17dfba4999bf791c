"""The real data of the mskt 0.1.22 sdist for tests, through the same cache the set-up script fills.

A missing cache is fetched (pip, a few seconds); a failed fetch fails the test rather than skipping it, so a
broken set-up cannot pass unnoticed.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from trainer.mskt import fetch_mskt


@lru_cache(maxsize=1)
def mskt_data() -> Path:
    return fetch_mskt()


def mskt_dicom() -> Path:
    """The de-identified GE multi-echo series (8 echoes x 24 slices)."""
    return mskt_data() / "MESE_T2_dicom_data_anon"
