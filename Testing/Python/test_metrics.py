"""Evaluation metrics against values computed by hand on tiny masks."""
from __future__ import annotations

import math

import numpy as np
import pytest

from KneeSegmentationLib.metrics import (dice, dice_per_label, expected_calibration_error, hd95,
                                         mean_surface_distance, directed_surface_distances, volume_error)


def cube(shape=(12, 12, 12), lo=(2, 2, 2), hi=(6, 6, 6)) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    return m


def test_dice_by_hand():
    a = cube()  # 64 voxels
    b = cube(lo=(2, 2, 3), hi=(6, 6, 7))  # shifted by one along x: overlap 48
    assert dice(a, b) == pytest.approx(2 * 48 / 128)
    assert dice(a, a) == 1.0
    assert dice(a, ~a & False) == 0.0
    assert dice(np.zeros(3, bool), np.zeros(3, bool)) == 1.0
    lab = a.astype(int) + 2 * (b & ~a)
    assert dice_per_label(lab, a.astype(int), [1]) == {1: 1.0}


def test_surface_distances_of_a_shift_by_hand():
    a = cube()
    b = cube(lo=(2, 2, 3), hi=(6, 6, 7))
    d = np.concatenate(directed_surface_distances(a, b, (1.0, 1.0, 1.0)))
    # Every surface voxel of a is 0 (shared with b's surface) or 1 voxel away from b's surface, and back.
    assert set(np.round(d, 6).tolist()) <= {0.0, 1.0}
    assert hd95(a, b) == pytest.approx(1.0)
    # anisotropic spacing: a shift along x (last axis) of 2.5 mm voxels
    assert hd95(a, b, (1.0, 1.0, 2.5)) == pytest.approx(2.5)
    a_surface = 64 - 8  # 4x4x4 cube: 8 interior voxels
    # 1 voxel away: a's face x=2 (16 voxels, outside b) and the 4 centre voxels of a's face x=5 (inside b,
    # not on its surface); the same 20 from b's side; all other surface voxels are shared (distance 0).
    expected = (20 + 20) / (2 * a_surface)
    assert mean_surface_distance(a, b) == pytest.approx(expected)
    assert hd95(a, a) == 0.0
    assert math.isinf(hd95(a, np.zeros_like(a)))
    assert hd95(np.zeros_like(a), np.zeros_like(a)) == 0.0


def test_hd95_is_the_larger_directed_percentile_not_the_pooled_one():
    """A big cube and the same cube with a thin slab far from it: pooled, the slab's distances are under 5 %
    of both surfaces and the 95th percentile stays 0; directed from the slab side, they are over 5 %."""
    a = np.zeros((40, 40, 40), bool)
    a[5:25, 5:25, 5:25] = True
    b = a.copy()
    b[8:17, 8:17, 33:35] = True  # a slab 8-9 voxels from the cube: 7 % of b's surface
    ab, ba = directed_surface_distances(a, b, (1.0, 1.0, 1.0))
    assert np.percentile(np.concatenate([ab, ba]), 95) < 1.0 < np.percentile(ba, 95)
    assert hd95(a, b) == pytest.approx(max(np.percentile(ab, 95), np.percentile(ba, 95)))
    assert hd95(a, b) == pytest.approx(hd95(b, a)) and hd95(a, b) > 7.0


def test_volume_error_by_hand():
    a, big = cube(), cube(hi=(6, 6, 7))  # 64 and 80 voxels
    assert volume_error(big, a) == pytest.approx(16 / 64)
    assert volume_error(a, big) == pytest.approx(-16 / 80)
    assert volume_error(np.zeros(3, bool), np.zeros(3, bool)) == 0.0


def test_expected_calibration_error_by_hand():
    # four voxels, all predicted class 0 with confidence 0.9; three are right -> |0.75 - 0.9| = 0.15
    prob = np.array([[0.9, 0.9, 0.9, 0.9], [0.1, 0.1, 0.1, 0.1]])
    assert expected_calibration_error(prob, np.array([0, 0, 0, 1])) == pytest.approx(0.15)
    # two bins: conf 0.9 (1 of 2 right: 0.4) and conf 0.6 (2 of 2 right: 0.4); ECE = 0.5*0.4 + 0.5*0.4
    prob = np.array([[0.9, 0.9, 0.6, 0.4], [0.1, 0.1, 0.4, 0.6]])
    assert expected_calibration_error(prob, np.array([0, 1, 0, 1])) == pytest.approx(0.4)
    perfect = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(perfect, np.array([0, 1])) == pytest.approx(0.0)
