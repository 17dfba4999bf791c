"""Running the network on a prepared array: device choice, sliding window, mixed precision, cancel, OOM.

Input and output are plain arrays on the model grid; geometry lives in ``pipeline``. The work is split into
windows so that progress and cancel act between windows (a window takes about a second on a CPU) and a
CUDA out-of-memory error can be retried with smaller windows, then on the CPU.
"""
from __future__ import annotations

import itertools
import logging
from typing import Callable, Sequence

import numpy as np
import torch

from ..constants import DEVICES  # noqa: F401 (re-exported)
from ..errors import InputError
from ..progress import CancelToken
from .precision import inference_dtype

log = logging.getLogger(__name__)

WINDOW_OVERLAP = 0.5  # fraction of a window shared with its neighbour
GAUSSIAN_SIGMA = 0.125  # of the window size: centre voxels weigh more than border voxels when blending
MIN_WINDOW = 32


def available_devices() -> list[str]:
    """Devices this machine offers, best first (for the GUI's device list and the CLI's help)."""
    found = []
    if torch.cuda.is_available():
        found.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append("mps")
    return found + ["cpu"]


def choose_device(requested: str = "auto") -> tuple[torch.device, list[str]]:
    """The torch device for ``requested`` and warnings; a missing GPU falls back to the CPU with a warning."""
    if requested not in DEVICES:
        raise InputError(f"unknown device {requested!r}; choose one of {', '.join(DEVICES)}")
    found = available_devices()
    if requested == "auto":
        return torch.device(found[0]), []
    if requested in found:
        return torch.device(requested), []
    return torch.device("cpu"), [f"{requested.upper()} requested but not available here; running on the CPU"]


def _gaussian_weights(size: Sequence[int]) -> np.ndarray:
    axes = []
    for n in size:
        x = (np.arange(n) - (n - 1) / 2) / (GAUSSIAN_SIGMA * n)
        axes.append(np.exp(-0.5 * x**2))
    w = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    return np.maximum(w / w.max(), 1e-3).astype(np.float32)


def _starts(length: int, window: int) -> list[int]:
    if length <= window:
        return [0]
    step = max(1, int(window * (1 - WINDOW_OVERLAP)))
    starts = list(range(0, length - window, step))
    return starts + [length - window]


def window_grid(shape: Sequence[int], window: Sequence[int]) -> list[tuple[int, int, int]]:
    """Start indices of the windows that tile ``shape`` with ``WINDOW_OVERLAP``."""
    return list(itertools.product(*(_starts(s, w) for s, w in zip(shape, window))))


def _round_window(window: Sequence[int], divisor: int) -> tuple[int, ...]:
    return tuple(max(MIN_WINDOW, (int(w) // divisor) * divisor) for w in window)


@torch.inference_mode()
def _predict_windows(
    net: torch.nn.Module,
    volume: np.ndarray,
    window: tuple[int, ...],
    device: torch.device,
    tta: bool,
    report: Callable[[float], None],
    cancel: CancelToken,
    logit_offsets: Sequence[float] = (),
) -> np.ndarray:
    padded_shape = [max(s, w) for s, w in zip(volume.shape, window)]
    pad = [(0, p - s) for s, p in zip(volume.shape, padded_shape)]
    vol = np.pad(volume, pad) if any(p[1] for p in pad) else volume
    n_classes = net.config.out_channels
    acc = np.zeros((n_classes, *vol.shape), np.float32)
    norm = np.zeros(vol.shape, np.float32)
    weights = _gaussian_weights(window)
    starts = window_grid(vol.shape, window)
    amp_dtype = inference_dtype(device.type)
    offsets = torch.tensor(logit_offsets or [0.0] * n_classes, dtype=torch.float32, device=device).view(1, -1, 1, 1, 1)

    def softmax(logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits.float() + offsets, dim=1)

    for i, (z, y, x) in enumerate(starts):
        cancel.check()
        sl = (slice(z, z + window[0]), slice(y, y + window[1]), slice(x, x + window[2]))
        t = torch.from_numpy(np.ascontiguousarray(vol[sl]))[None, None].to(device)
        with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            prob = softmax(net(t))
            if tta:  # left-right mirror: the net was trained on left and right knees
                prob = (prob + softmax(net(t.flip(-1))).flip(-1)) / 2
        acc[(slice(None), *sl)] += prob[0].cpu().numpy() * weights
        norm[sl] += weights
        report((i + 1) / len(starts))
    acc /= norm[None]
    return acc[(slice(None), *(slice(0, s) for s in volume.shape))]


def predict_probabilities(
    net: torch.nn.Module,
    volume: np.ndarray,
    window: Sequence[int],
    device: torch.device,
    tta: bool = False,
    report: Callable[[float], None] = lambda f: None,
    cancel: CancelToken | None = None,
    logit_offsets: Sequence[float] = (),
) -> tuple[np.ndarray, torch.device, list[str]]:
    """Class probabilities (C, z, y, x) for a normalized ``volume`` (z, y, x); ``logit_offsets`` (one per class,
    the model plan's calibration) are added to the logits before the softmax.

    CUDA out-of-memory is retried with windows half the size, then on the CPU; the device finally used and
    warnings are returned so the front end can tell the user.
    """
    cancel = cancel or CancelToken()
    divisor = net.config.size_divisor
    window = _round_window(window, divisor)
    warnings: list[str] = []
    while True:
        net.to(device)
        try:
            prob = _predict_windows(net, volume, window, device, tta, report, cancel, tuple(logit_offsets))
            return prob, device, warnings
        except torch.OutOfMemoryError:
            if device.type == "cuda":
                torch.cuda.empty_cache()
            smaller = _round_window([w // 2 for w in window], divisor)
            if device.type != "cpu" and smaller != window:
                warnings.append(f"GPU out of memory with windows {window}; retrying with {smaller}")
                window = smaller
            elif device.type != "cpu":
                warnings.append("GPU out of memory even with small windows; falling back to the CPU")
                device = torch.device("cpu")
            else:
                raise


def entropy(prob: np.ndarray) -> np.ndarray:
    """Per-voxel predictive entropy normalized to [0, 1] (1 = all classes equally likely)."""
    p = np.clip(prob, 1e-7, 1.0)
    return (-(p * np.log(p)).sum(axis=0) / np.log(prob.shape[0])).astype(np.float32)
