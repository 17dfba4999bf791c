"""The tendons painted at the patella's poles: where they go, what they are, and what they leave alone."""
from __future__ import annotations

import numpy as np
import pytest

from trainer import tissues as T
from trainer.tendons import add_tendons

SPACING = 1.0


def _knee(flip: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A block knee on a (z, y, x) grid: femur above tibia, patella in front of the joint, fat around.
    ``flip`` turns it upside down and back to front, so nothing may rely on the grid's orientation."""
    shape = (120, 80, 60)
    femur, tibia, patella = (np.zeros(shape, bool) for _ in range(3))
    femur[62:118, 30:60, 15:45] = True
    tibia[2:58, 30:60, 15:45] = True
    patella[58:90, 12:26, 18:42] = True
    if flip:
        femur, tibia, patella = (m[::-1, ::-1].copy() for m in (femur, tibia, patella))
    gen = np.full(shape, T.FAT, np.uint8)
    gen[femur], gen[tibia], gen[patella] = T.FEMUR_MARROW, T.TIBIA_MARROW, T.PATELLA_MARROW
    return gen, femur, tibia, patella


@pytest.mark.parametrize("flip", [False, True])
def test_tendons_leave_both_poles_along_the_leg_and_touch_only_soft_tissue(flip):
    gen, femur, tibia, patella = _knee(flip)
    before = gen.copy()
    add_tendons(gen, femur, tibia, patella, SPACING, np.random.default_rng(0))
    tendon = gen == T.TENDON
    assert not (tendon & (femur | tibia | patella)).any()
    assert (gen[~tendon] == before[~tendon]).all()
    z = np.argwhere(tendon)[:, 0]
    top, bottom = (58, 90) if not flip else (120 - 90, 120 - 58)
    above, below = (z >= bottom, z < top) if not flip else (z < top, z >= bottom)
    assert above.sum() > 300 and below.sum() > 300  # one tendon beyond each pole
    assert (z[above] - bottom if not flip else top - z[above]).max() >= 25  # at least 30 mm long, less overlap
    # in front of the femur, not through it: the tendons stay within the patella's front-back reach
    y = np.argwhere(tendon)[:, 1]
    front = (y < 36) if not flip else (y >= 80 - 36)
    assert front.all()


def test_no_tendon_without_a_patella_and_tendons_are_background():
    gen, femur, tibia, patella = _knee()
    gen[patella] = T.FAT
    add_tendons(gen, femur, tibia, np.zeros_like(patella), SPACING, np.random.default_rng(0))
    assert not (gen == T.TENDON).any()
    assert T.TARGET_OF[T.TENDON] == 0 and T.TENDON < T.NUM_GEN_LABELS


def test_tendon_sizes_vary_between_maps():
    sizes = set()
    for seed in range(4):
        gen, femur, tibia, patella = _knee()
        add_tendons(gen, femur, tibia, patella, SPACING, np.random.default_rng(seed))
        sizes.add(int((gen == T.TENDON).sum()))
    assert len(sizes) == 4
