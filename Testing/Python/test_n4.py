"""Fast N4: removes a known multiplicative bias from a phantom, keeps the geometry, reports progress, cancels
within a second, and refuses empty masks and empty images with a clear message."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import SimpleITK as sitk

from KneeSegmentationLib.errors import Cancelled, InputError
from KneeSegmentationLib.segment.n4 import N4Settings, n4_correct, shrink_factors
from KneeSegmentationLib.progress import CancelToken

SHAPE = (20, 64, 64)  # z, y, x
SPACING = (0.8, 0.8, 3.0)  # x, y, z mm: anisotropic like a 2D multi-slice acquisition


def phantom() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(truth, bias, foreground): two tissues in an ellipsoid 'limb' on a dark background, and a smooth bias."""
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij")
    limb = (x / 0.85) ** 2 + (y / 0.7) ** 2 + (z / 1.2) ** 2 < 1
    bone = (x - 0.2) ** 2 + (y + 0.1) ** 2 < 0.12
    truth = np.where(limb, np.where(bone, 300.0, 800.0), 20.0)
    bias = np.exp(0.45 * x - 0.3 * y + 0.25 * x * y + 0.15 * z)  # ~ 0.4 .. 2.5 across the field
    return truth.astype(np.float32), bias.astype(np.float32), limb


def as_image(array: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.SetSpacing(SPACING)
    image.SetOrigin((5.0, -7.0, 11.0))
    image.SetDirection((0, 0, 1, 1, 0, 0, 0, 1, 0))  # sagittal-like
    return image


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.fixture(scope="module")
def corrected_run() -> tuple[sitk.Image, sitk.Image, list[float]]:
    """(biased phantom, its correction, progress fractions reported), computed once for the module."""
    truth, bias, _ = phantom()
    noise = np.random.default_rng(0).normal(0, 10, SHAPE)
    biased = as_image(truth * bias + noise)
    seen: list[float] = []
    return biased, n4_correct(biased, progress=seen.append), seen


def test_removes_a_synthetic_multiplicative_bias(corrected_run) -> None:
    biased, corrected, _ = corrected_run
    truth, bias, limb = phantom()
    assert corrected.GetSize() == biased.GetSize() and corrected.GetSpacing() == biased.GetSpacing()
    assert corrected.GetOrigin() == biased.GetOrigin() and corrected.GetDirection() == biased.GetDirection()
    out = sitk.GetArrayFromImage(corrected)
    before = correlation(sitk.GetArrayViewFromImage(biased)[limb], truth[limb])
    after = correlation(out[limb], truth[limb])
    assert before < 0.85 and after > 0.98, f"correlation with the truth: {before:.3f} biased, {after:.3f} corrected"
    soft = limb & (truth == 800)
    cv_before = np.std((truth * bias)[soft]) / np.mean((truth * bias)[soft])
    cv_after = np.std(out[soft]) / np.mean(out[soft])
    assert cv_after < cv_before / 3, f"spread of one tissue: CV {cv_before:.3f} -> {cv_after:.3f}"


def test_progress_reaches_one_and_never_goes_back(corrected_run) -> None:
    seen = corrected_run[2]
    assert len(seen) >= 2 and seen[-1] == 1.0
    assert all(b >= a for a, b in zip(seen, seen[1:]))


def test_shrink_keeps_thick_slices_and_bounds_the_fit_size() -> None:
    image = sitk.Image([256, 256, 24], sitk.sitkFloat32)
    image.SetSpacing((0.625, 0.625, 4.0))
    assert shrink_factors(image)[2] == 1 and shrink_factors(image)[0] > 1
    big = sitk.Image([384, 384, 160], sitk.sitkFloat32)
    big.SetSpacing((0.365, 0.365, 0.7))
    factors = shrink_factors(big)
    assert np.prod(np.ceil(np.divide(big.GetSize(), factors))) <= N4Settings().max_fit_voxels


def test_cancel_mid_run_raises_within_a_second() -> None:
    truth, bias, _ = phantom()
    token = CancelToken()
    cancelled_at: list[float] = []

    def cancel_on_first_report(fraction: float) -> None:  # the fit has started and is running
        if not cancelled_at:
            cancelled_at.append(time.perf_counter())
            token.cancel()

    long_enough = N4Settings(fit_spacing_mm=1.6)  # a fit of a second or more, so the cancel lands mid-run
    with pytest.raises(Cancelled):
        n4_correct(as_image(truth * bias), cancel=token, progress=cancel_on_first_report, settings=long_enough)
    latency = time.perf_counter() - cancelled_at[0]
    fitting = [t for t in threading.enumerate() if t.name == "n4-fit" and t.is_alive()]
    assert latency < 1.0, f"cancel took {latency:.2f} s"
    assert fitting, "the fit had already finished: the test did not cancel mid-run"
    fitting[0].join(30)  # let the abandoned fit end before the next test


def test_cancelled_token_stops_before_any_work() -> None:
    token = CancelToken()
    token.cancel()
    truth, bias, _ = phantom()
    with pytest.raises(Cancelled):
        n4_correct(as_image(truth * bias), cancel=token)


def test_empty_mask_is_refused() -> None:
    truth, bias, _ = phantom()
    image = as_image(truth * bias)
    mask = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    mask.CopyInformation(image)
    with pytest.raises(InputError, match="mask .*empty or too small"):
        n4_correct(image, mask=mask)


def test_image_without_positive_voxels_is_refused() -> None:
    with pytest.raises(InputError, match="too few positive voxels"):
        n4_correct(as_image(-np.abs(phantom()[0])))


def test_cancel_during_n4_then_exit_does_not_crash(tmp_path):
    """A cancelled fit still finishing in ITK must not abort the interpreter at exit (exit code 134)."""
    import subprocess
    import sys
    import textwrap

    script = tmp_path / "cancel_then_exit.py"
    script.write_text(textwrap.dedent('''
        import numpy as np, SimpleITK as sitk
        from KneeSegmentationLib.errors import Cancelled
        from KneeSegmentationLib.segment.n4 import N4Settings, n4_correct
        from KneeSegmentationLib.progress import CancelToken
        rng = np.random.default_rng(0)
        image = sitk.GetImageFromArray((rng.random((24, 200, 200)) * 100 + 50).astype(np.float32))
        # A fit that cannot stop early (threshold 0: all 100 iterations, ~3 s here): it is still running when the
        # first progress report, one poll interval after the start, cancels it, on a fast machine too.
        slow = N4Settings(fit_spacing_mm=4.0, iterations=(100,), convergence_threshold=0.0)
        token = CancelToken()
        try:
            n4_correct(image, cancel=token, progress=lambda fraction: token.cancel(), settings=slow)
        except Cancelled:
            print("cancelled")
    '''))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-500:]
    assert "cancelled" in proc.stdout


def test_fit_progress_is_learnt_from_the_last_fit_and_holds_below_the_end(monkeypatch) -> None:
    """The fit's progress is a time estimate (no Python observer inside ITK's loop): the expected duration is
    the last finished fit's seconds per mask voxel, and an overrunning fit waits at 0.95, never at 1."""
    from KneeSegmentationLib.segment import n4 as n4_module

    monkeypatch.setattr(n4_module._FitClock, "seconds_per_voxel", 1e-4)
    now = [100.0]
    monkeypatch.setattr(n4_module.time, "perf_counter", lambda: now[0])
    clock = n4_module._FitClock(10_000)  # expected 1 s
    now[0] += 0.5
    assert clock.fraction() == pytest.approx(0.475)
    now[0] += 2.5  # the fit takes 3 s, longer than expected
    assert clock.fraction() == 0.95
    clock.finished()
    assert n4_module._FitClock.seconds_per_voxel == pytest.approx(3e-4)
    assert n4_module._FitClock(10_000).fraction() == 0.0
