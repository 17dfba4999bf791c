"""Model grid, normalization, crop and paste-back."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from KneeSegmentationLib.errors import InputError
from KneeSegmentationLib.segment.postprocess import clean_labels, probabilities_to_labels
from KneeSegmentationLib.segment.preprocess import (RoiBox, inside_mask, model_grid_around, normalize, whole_image_grid,
                                            physical_bounds, prepare_input, resample_to_grid)

from phantom import centered_grid, phantom, phantom_labels


def test_model_grid_is_centred_and_axis_aligned():
    grid = model_grid_around((10.0, -5.0, 3.0), (1.5, 1.5, 1.5), (32, 32, 32))
    lo, hi = physical_bounds(grid)
    assert np.allclose((lo + hi) / 2, (10, -5, 3))
    assert grid.GetDirection() == (1, 0, 0, 0, 1, 0, 0, 0, 1)


def test_whole_image_grid_never_goes_below_the_window_or_coarser_than_the_model():
    small = centered_grid((50, 50, 50), (1.0, 1.0, 1.0))
    grid, window = whole_image_grid(small, (1.5,) * 3, (96, 96, 96), 8)
    assert grid.GetSpacing()[0] == pytest.approx(1.5) and grid.GetSize() == (96, 96, 96) and window == (96, 96, 96)
    big = centered_grid((400, 400, 300), (1.0, 1.0, 1.0))
    grid, _ = whole_image_grid(big, (1.5,) * 3, (96, 96, 96), 8)
    assert grid.GetSpacing()[0] == pytest.approx(1.5)
    lo, hi = physical_bounds(grid)
    blo, bhi = physical_bounds(big)
    assert np.all(lo <= blo) and np.all(hi >= bhi)


def test_whole_image_grid_reads_the_patch_in_array_order():
    """patch is (z, y, x) like the network's arrays, spacing (x, y, z) like SimpleITK's: a thin slab (short in z)
    fits a (32, 96, 96) window in one pass, its grid never below the window along any axis."""
    slab = centered_grid((140, 140, 40), (1.0, 1.0, 1.0))  # x, y, z
    grid, window = whole_image_grid(slab, (1.5,) * 3, (32, 96, 96), 8)
    assert grid.GetSize() == (96, 96, 32)
    assert window == (32, 96, 96)
    tall = centered_grid((140, 140, 400), (1.0, 1.0, 1.0))
    grid, window = whole_image_grid(tall, (1.5,) * 3, (32, 96, 96), 8)
    assert window == (32, 96, 96) and grid.GetSize()[2] > 96  # tiles along z, in the window's own order


def test_oblique_image_lands_on_the_right_place():
    rot = sitk.VersorTransform((0.3, 0.2, 1.0), 0.5).GetMatrix()  # oblique, anisotropic acquisition
    _, labels = phantom(size=(60, 60, 30), spacing=(1.5, 1.5, 4.0), direction=rot)
    grid = model_grid_around((0, 0, 0), (2.0, 2.0, 2.0), (48, 48, 48))
    resampled = sitk.GetArrayFromImage(resample_to_grid(labels, grid, sitk.sitkNearestNeighbor))
    truth = sitk.GetArrayFromImage(phantom_labels(grid))
    inside = inside_mask(labels, grid)
    for k in (1, 2):
        a, b = resampled[inside] == k, truth[inside] == k
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.9


def test_normalize_is_robust_and_masks_outside():
    rng = np.random.default_rng(0)
    x = rng.normal(100, 10, (20, 20, 20)).astype(np.float32)
    x[0, 0, 0] = 1e6  # one hot voxel must not change the scale
    mask = np.ones(x.shape, bool)
    mask[:, :, :2] = False
    out = normalize(x, mask)
    assert out.dtype == np.float32
    assert np.all(out[~mask] == 0)
    assert 0.4 < np.median(out[mask]) < 0.6 and out.max() <= 1.5
    assert np.allclose(normalize(3 * x + 7, mask), out, atol=1e-5)  # contrast and offset invariant


@pytest.mark.parametrize("bad", [np.zeros((8, 8, 8), np.float32), np.full((8, 8, 8), 5.0, np.float32)])
def test_normalize_refuses_constant(bad):
    with pytest.raises(InputError, match="constant"):
        normalize(bad)


def test_prepare_input_outside_image_is_zero():
    image, _ = phantom(size=(40, 40, 20), spacing=(2.0, 2.0, 2.0))
    grid = model_grid_around((30.0, 0.0, 0.0), (2.0, 2.0, 2.0), (32, 32, 32))  # partly outside the image
    x = prepare_input(image, grid, {"lower_percentile": 1, "upper_percentile": 99})
    mask = inside_mask(image, grid)
    assert 0.2 < mask.mean() < 0.8 and np.all(x[~mask] == 0)


def test_crop_and_paste_back_is_identity():
    """One-hot labels moved onto a sub-grid of the input and pasted back give the input labels there and
    background elsewhere."""
    image, labels = phantom(size=(64, 64, 48), spacing=(2.0, 2.0, 2.0))
    grid = model_grid_around((0.0, 0.0, 0.0), (2.0, 2.0, 2.0), (40, 40, 40))
    on_grid = sitk.GetArrayFromImage(resample_to_grid(labels, grid, sitk.sitkNearestNeighbor))
    prob = np.stack([(on_grid == k).astype(np.float32) for k in range(4)])
    back = probabilities_to_labels(prob, grid, labels)
    truth = sitk.GetArrayFromImage(labels)
    region = sitk.GetArrayFromImage(resample_to_grid(grid + 1, labels, sitk.sitkNearestNeighbor)) > 0
    assert np.array_equal(back[region], truth[region])
    assert not back[~region].any()


def test_clean_labels_removes_islands_and_fills_holes():
    _, labels = phantom(size=(48, 48, 40), spacing=(2.0, 2.0, 2.0))
    lab = sitk.GetArrayFromImage(labels)
    noisy = lab.copy()
    noisy[2, 2, 2] = 1  # a speck of "femur" far from the femur
    zf, yf, xf = np.argwhere(lab == 1).mean(axis=0).astype(int)
    noisy[zf, yf, xf] = 0  # a hole inside the femur
    cleaned = clean_labels(noisy, labels.GetSpacing())
    assert cleaned[2, 2, 2] == 0 and cleaned[zf, yf, xf] == 1
    assert np.array_equal(cleaned, lab)


def test_clean_labels_leaves_no_island_slicer_would_count():
    """A voxel touching the femur only at a corner is an island for Slicer's Islands effect (face connectivity)."""
    _, labels = phantom(size=(48, 48, 40), spacing=(2.0, 2.0, 2.0))
    lab = sitk.GetArrayFromImage(labels)
    femur = np.pad(lab == 1, 1)
    faces = sum(np.roll(femur, s, axis=a) for a in range(3) for s in (-1, 1))
    corners = sum(np.roll(femur, (i, j, k), axis=(0, 1, 2)) for i in (-1, 1) for j in (-1, 1) for k in (-1, 1))
    candidates = np.argwhere((np.pad(lab, 1) == 0) & (faces == 0) & (corners > 0)) - 1
    corner = tuple(int(c) for c in candidates[len(candidates) // 2])  # background touching the femur at a corner
    noisy = lab.copy()
    noisy[corner] = 1
    cleaned = clean_labels(noisy, labels.GetSpacing())
    assert cleaned[corner] == 0 and np.array_equal(cleaned, lab)
    islands = sitk.ConnectedComponent(sitk.GetImageFromArray((cleaned == 1).astype(np.uint8)), False)
    assert sitk.GetArrayViewFromImage(islands).max() == 1


def test_roi_box_validates():
    with pytest.raises(InputError):
        RoiBox((0, 0, 0), (10, -1, 10))


@pytest.mark.parametrize("direction", [None, (0, 0, -1, 1, 0, 0, 0, -1, 0)])  # axial, sagittal PIR
def test_a_fibula_is_kept_on_its_own_evidence(direction):
    image, labels = phantom(size=(48, 48, 40), spacing=(2.0, 2.0, 2.0), direction=direction)
    lab = sitk.GetArrayFromImage(labels)
    spacing, direction = labels.GetSpacing(), labels.GetDirection()
    wrong_tibia = lab.copy()
    wrong_tibia[wrong_tibia == 2] = 0  # the tibia was missed: the fibula must not go with it
    assert np.array_equal(clean_labels(wrong_tibia, spacing, direction) == 3, lab == 3)
    speck = lab.copy()
    speck[speck == 3] = 0
    fz, fy, fx = np.argwhere(lab == 3)[0]
    speck[fz, fy, fx] = 3  # 8 mm^3: not a bone
    assert not (clean_labels(speck, spacing, direction) == 3).any()


@pytest.mark.parametrize("shift, kept", [((0, -14, 0), False),  # 28 mm anterior: a tendon, not a fibula
                                         ((22, 0, 0), False),  # 44 mm up, above the tibia: a vessel
                                         ((0, 3, 0), True)])  # 6 mm further back: still a fibula
def test_a_fibula_in_the_wrong_place_is_dropped(shift, kept):
    _, labels = phantom(size=(48, 48, 40), spacing=(2.0, 2.0, 2.0))  # identity direction: index z = superior
    lab = sitk.GetArrayFromImage(labels)
    moved = lab.copy()
    moved[moved == 3] = 0
    fib = np.argwhere(lab == 3) + np.array(shift)
    fib = fib[np.all((fib >= 0) & (fib < lab.shape), axis=1)]
    moved[tuple(fib.T)] = np.where(moved[tuple(fib.T)] == 0, 3, moved[tuple(fib.T)])
    assert (clean_labels(moved, labels.GetSpacing()) == 3).any() == kept
