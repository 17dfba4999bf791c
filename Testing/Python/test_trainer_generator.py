"""prepare + load_dataset + the synthetic generator: shapes, labels, ranges, determinism, bad datasets."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from KneeSegmentationLib.constants import NUM_CLASSES
from KneeSegmentationLib.errors import DatasetError
from KneeSegmentationLib.segment.preprocess import NORMALIZED_RANGE

from trainer import ranges
from trainer import tissues as T
from trainer.dataset import SourceMap, load_dataset, prepare, read_manifest
from trainer.generator import Generator

from trainer_data import TINY_CROP, TINY_SPACING, make_tiny_dataset, tiny_sources, write_label_map


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("tinyds"))


def test_prepare_writes_manifest_with_roles_hashes_and_tissues(dataset):
    manifest = read_manifest(dataset)
    roles = {m["id"]: m["role"] for m in manifest["maps"]}
    assert roles == {"train_fib": "train", "val_nofib": "val"}
    for m in manifest["maps"]:
        assert len(m["source_sha256"]) == 64 and len(m["file_sha256"]) == 64
        assert m["voxels"]["femur"] > 0 and m["voxels"]["tibia"] > 0
    assert [m["has_fibula"] for m in manifest["maps"]] == [True, False]
    maps = load_dataset(dataset)
    labels = maps[0].labels
    present = set(np.unique(labels).tolist())
    # bones with a cortical rim, cartilage and background pseudo-tissues
    assert {T.FEMUR_MARROW, T.FEMUR_CORTEX, T.TIBIA_CORTEX, T.FIBULA_MARROW, T.FEMORAL_CARTILAGE,
            T.FLUID} <= present
    assert present & {T.MUSCLE, T.FAT, T.AIR}


def test_generator_shapes_labels_and_ranges(dataset):
    maps = load_dataset(dataset, ("train",))
    gen = Generator(maps, TINY_SPACING, TINY_CROP)
    rng, tg = np.random.default_rng(0), torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(6):
        s = gen.sample(rng, tg)
        assert s.image.shape == TINY_CROP and s.target.shape == TINY_CROP
        assert s.image.dtype == np.float32 and s.target.dtype == np.int64
        assert NORMALIZED_RANGE[0] <= s.image.min() and s.image.max() <= NORMALIZED_RANGE[1]
        assert set(np.unique(s.target).tolist()) <= {0, 1, 2, 3}
        assert not s.target[~s.inside].any() and not s.image[~s.inside].any()
        seen |= set(np.unique(s.target).tolist())
    assert {1, 2} <= seen


def test_generator_is_deterministic_with_a_seed(dataset):
    maps = load_dataset(dataset, ("train",))
    gen = Generator(maps, TINY_SPACING, TINY_CROP)

    def draw(seed):
        return gen.sample(np.random.default_rng(seed), torch.Generator().manual_seed(seed))

    a, b, c = draw(5), draw(5), draw(6)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.target, b.target)
    assert not np.array_equal(a.image, c.image)


def test_missing_and_malformed_datasets_are_rejected(dataset, tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        load_dataset(tmp_path / "nope")
    (tmp_path / "bad").mkdir()
    with pytest.raises(DatasetError, match="manifest"):
        load_dataset(tmp_path / "bad")
    (tmp_path / "bad" / "manifest.json").write_text("{not json")
    with pytest.raises(DatasetError, match="malformed"):
        load_dataset(tmp_path / "bad")
    broken = tmp_path / "broken"
    shutil.copytree(dataset, broken)
    img = sitk.ReadImage(str(broken / "train_fib.nrrd"))
    sitk.WriteImage(img * 0, str(broken / "train_fib.nrrd"))
    with pytest.raises(DatasetError, match="checksum"):
        load_dataset(broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    (broken / "train_fib.nrrd").unlink()
    with pytest.raises(DatasetError, match="missing"):
        load_dataset(broken)
    assert manifest["maps"][0]["file"] == "train_fib.nrrd"


def test_bad_source_label_maps_are_rejected(tmp_path):
    good = write_label_map(tmp_path / "good.nrrd", True)
    empty = tmp_path / "empty.nrrd"
    img = sitk.ReadImage(str(good))
    sitk.WriteImage(img * 0, str(empty))
    floaty = tmp_path / "float.nrrd"
    sitk.WriteImage(sitk.Cast(img, sitk.sitkFloat32), str(floaty))
    for path, message in [(empty, "empty"), (floaty, "integer"), (tmp_path / "none.nrrd", "not found")]:
        with pytest.raises(DatasetError, match=message):
            prepare([SourceMap("x", path, "train")], tmp_path / f"out_{path.stem}")
    with pytest.raises(DatasetError, match="unexpected label"):
        prepare([SourceMap("x", good, "train", labels={5: "femur", 6: "tibia"})], tmp_path / "out_labels")
    out = prepare(tiny_sources(tmp_path / "src"), tmp_path / "ok", spacing=2.0, log=lambda *_: None)
    with pytest.raises(DatasetError, match="not overwritten"):
        prepare(tiny_sources(tmp_path / "src"), out, spacing=2.0, log=lambda *_: None)


def test_bone_points_spread_along_the_whole_bone(dataset):
    """Crop centres cover each bone's whole extent (shafts too), not only the joint."""
    m = load_dataset(dataset, ("train",))[0]
    target = T.TARGET_OF[m.labels]
    for name, label in (("femur", 1), ("tibia", 2)):
        z_vox = np.argwhere(target == label)[:, 0]
        z_mm = m.origin[2] + z_vox * m.spacing
        points = m.bone_points[name]
        assert len(points) >= 10
        covered = (points[:, 2].max() - points[:, 2].min()) / (z_mm.max() - z_mm.min())
        assert covered > 0.9, (name, covered)


def test_crops_centred_along_the_shafts_reach_far_from_the_joint(dataset):
    maps = load_dataset(dataset, ("train",))
    gen = Generator(maps, TINY_SPACING, TINY_CROP, bone_crop_p=1.0)
    rng = np.random.default_rng(0)
    far = [np.linalg.norm(gen._choose_center(maps[0], rng) - maps[0].joint_center) for _ in range(200)]
    always_joint = Generator(maps, TINY_SPACING, TINY_CROP, bone_crop_p=0.0)
    near = [np.linalg.norm(always_joint._choose_center(maps[0], rng) - maps[0].joint_center) for _ in range(200)]
    assert max(near) <= np.sqrt(3) * 30.0 + 1e-6  # joint-centred crops stay within CROP_OFFSET_MM per axis
    assert np.percentile(far, 90) > 35.0 and max(far) > max(near) * 0.8


def test_the_labels_of_a_crop_are_those_of_the_whole_map(dataset):
    """Sampling from the box of the map that a crop reaches gives the labels sampling the whole map would."""
    import torch.nn.functional as F

    m = load_dataset(dataset, ("train",))[0]
    gen = Generator([m], TINY_SPACING, TINY_CROP)
    grid = gen._fine_grid(m, m.joint_center + 7.0, np.eye(3), None)
    whole = F.grid_sample(torch.from_numpy(m.labels.astype(np.float32))[None, None], grid, mode="nearest",
                          padding_mode="zeros", align_corners=True).long()[0, 0]
    assert torch.equal(gen._labels_at(m, grid), whole)


def test_marrow_is_drawn_like_fat_often_but_not_always(dataset, monkeypatch):
    """Real marrow is fat: the generator must often paint them alike (so the cortex and shape separate them;
    in fat-suppressed contrasts both dark),
    and still sometimes apart (fat-saturated marrow oedema, red marrow)."""
    from trainer import ranges as R

    gen = Generator(load_dataset(dataset, ("train",)), TINY_SPACING, TINY_CROP)
    rng = np.random.default_rng(3)
    close = []
    for _ in range(400):
        means, _ = gen._tissue_intensities(rng)
        gaps = np.abs(means[list(T.MARROWS)].numpy() - float(means[T.FAT]))
        close.append(bool(gaps.max() <= R.MARROW_FAT_JITTER + 1e-6))
    share = float(np.mean(close))
    expected = 1 - (1 - R.MARROW_LIKE_FAT_P) * (1 - R.FAT_SUPPRESSED_P)  # either draw paints them alike
    assert expected - 0.1 < share < expected + 0.1, share
    assert share < 0.9

    monkeypatch.setattr(R, "FAT_SUPPRESSED_P", 1.0)  # a fat-suppressed contrast: fat and marrow both dark
    for seed in range(20):
        means, _ = gen._tissue_intensities(np.random.default_rng(seed))
        assert float(means[T.FAT]) <= R.FAT_SUPPRESSED_RANGE[1]
        assert np.abs(means[list(T.MARROWS)].numpy() - float(means[T.FAT])).max() <= R.MARROW_FAT_JITTER + 1e-6
    monkeypatch.setattr(R, "FAT_SUPPRESSED_P", 0.0)

    monkeypatch.setattr(R, "BAND_LIKE_FAT_P", 1.0)
    means, _ = gen._tissue_intensities(np.random.default_rng(4))
    assert float(means[T.FLUID]) == float(means[T.FAT])


def test_soft_targets_are_the_class_fractions_of_each_voxel(dataset):
    maps = load_dataset(dataset, ("train",))
    with ranges.overridden({"SUPERSAMPLE": 2, "SOFT_TARGETS": True}):
        gen = Generator(maps, TINY_SPACING, TINY_CROP)
    s = gen.sample(np.random.default_rng(1), torch.Generator().manual_seed(1))
    soft = s.soft
    assert soft.shape == (NUM_CLASSES, *TINY_CROP) and soft.dtype == np.float32
    assert np.allclose(soft.sum(axis=0), 1.0, atol=1e-5) and soft.min() >= 0.0
    assert np.all(soft[0][~s.inside] == 1.0)  # outside the acquired box: certain background, as the hard target
    pure = soft.max(axis=0) == 1.0
    assert np.array_equal(soft.argmax(axis=0)[pure], s.target[pure])  # a voxel of one class has that class
    border = ~pure & s.inside
    assert border.mean() > 0.02  # the bones' borders are mixtures, in steps of 1/8 (2^3 label samples)
    assert np.allclose(soft[:, border] * 8, np.round(soft[:, border] * 8), atol=1e-4)


def test_soft_targets_without_supersampling_are_refused(dataset):
    maps = load_dataset(dataset, ("train",))
    with ranges.overridden({"SOFT_TARGETS": True}), pytest.raises(ValueError, match="SUPERSAMPLE"):
        Generator(maps, TINY_SPACING, TINY_CROP)
    hard = Generator(maps, TINY_SPACING, TINY_CROP).sample(np.random.default_rng(1), torch.Generator().manual_seed(1))
    assert hard.soft is None


def test_fine_targets_are_the_classes_at_the_supersampled_points(dataset):
    maps = load_dataset(dataset, ("train",))
    with ranges.overridden({"SUPERSAMPLE": 2, "FINE_TARGETS": True}):
        gen = Generator(maps, TINY_SPACING, TINY_CROP)
    s = gen.sample(np.random.default_rng(1), torch.Generator().manual_seed(1))
    assert s.fine.shape == tuple(2 * c for c in TINY_CROP) and s.fine.dtype == np.uint8 and s.soft is None
    blocks = s.fine.reshape(TINY_CROP[0], 2, TINY_CROP[1], 2, TINY_CROP[2], 2).transpose(0, 2, 4, 1, 3, 5)
    blocks = blocks.reshape(*TINY_CROP, 8)
    assert not blocks[~s.inside].any()  # outside the acquired box: background at every point
    pure = (blocks == blocks[..., :1]).all(-1)
    assert np.mean(blocks[pure][:, 0] == s.target[pure]) > 0.97  # a voxel whose 8 points agree has their class
    assert (~pure & s.inside).mean() > 0.02  # the borders pass through voxels
    with ranges.overridden({"SUPERSAMPLE": 2, "FINE_TARGETS": True, "SOFT_TARGETS": True}), \
            pytest.raises(ValueError, match="choose one"):
        Generator(maps, TINY_SPACING, TINY_CROP)
    with ranges.overridden({"FINE_TARGETS": True}), pytest.raises(ValueError, match="SUPERSAMPLE"):
        Generator(maps, TINY_SPACING, TINY_CROP)
