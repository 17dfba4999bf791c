"""The LLP26 shape model: a safe reader for its pickle, closed bone surfaces in the right frame, label maps with
plausible bones, refusal of interpenetrating draws, and maps that the dataset preparation accepts.

The sdist is fetched with pip into the shared cache on first use (a failed fetch fails, never skips)."""
from __future__ import annotations

import io
import json
import pickle
import tarfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from trainer import sdist as sdist_module
import SimpleITK as sitk

from KneeSegmentationLib.errors import DatasetError
from trainer import meshes as M
from trainer import shapemodel as S
from trainer import voxelize as V
from trainer.dataset import SourceMap, prepare_map

ACCEPTED_SEED = 3  # an N(0, 1) training draw whose bones do not interpenetrate (checked)


@lru_cache(maxsize=1)
def models() -> Path:
    return S.fetch_llp26()


@lru_cache(maxsize=1)
def accepted():
    nodes = S.load_model(models()).draw(ACCEPTED_SEED)
    return nodes, *S.rasterize(nodes, 1.0, models())


# ------------------------------------------------------------------------------------------------ pickle
class _Hostile:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        import os
        return os.system, (self.command,)


class _HostileEval:
    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        return eval, (self.code,)


@pytest.mark.parametrize("kind", ["os.system", "builtins.eval"])
def test_the_unpickler_refuses_anything_but_numpy_arrays(tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "pwned"
    payload = _Hostile(f"touch {marker}") if kind == "os.system" else \
        _HostileEval(f"open({str(marker)!r}, 'w').close()")
    path = tmp_path / "evil.pc"
    path.write_bytes(pickle.dumps({"mean": np.zeros(3), "modes": np.zeros((3, 1)), "weights": payload}))
    with pytest.raises(DatasetError, match="refusing to unpickle"):
        S.load_pc(path)
    assert not marker.exists(), "the hostile pickle's payload ran"
    # the test's pickle is really hostile: it names the callable a plain unpickler would call
    import pickletools

    names = " ".join(str(arg) for op, arg, _ in pickletools.genops(path.read_bytes()) if arg is not None)
    assert ("system" if kind == "os.system" else "eval") in names


def test_the_unpickler_reads_plain_arrays_and_refuses_garbage(tmp_path: Path) -> None:
    good = tmp_path / "good.pc"
    good.write_bytes(pickle.dumps({"mean": np.arange(6.0), "modes": np.ones((6, 2)), "weights": np.array([2.0, 1.0])}))
    model = S.load_pc(good)
    assert model.modes.shape == (6, 2) and model.n_modes == 2
    bad = tmp_path / "bad.pc"
    bad.write_bytes(b"\x80\x04not a pickle")
    with pytest.raises(DatasetError):
        S.load_pc(bad)


# ------------------------------------------------------------------------------------------------ fetch
def test_extraction_takes_only_wanted_regular_files(tmp_path: Path) -> None:
    sdist = tmp_path / "sdist.tar.gz"
    root = S.ARCHIVE_ROOT
    with tarfile.open(sdist, "w:gz") as archive:
        def add(name, data=b"x", kind=tarfile.REGTYPE, link=""):
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.size = kind, link, len(data) if kind == tarfile.REGTYPE else 0
            archive.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
        add(f"{root}/{S.PC_FILE}", b"pc")
        add(f"{root}/setup.py", b"never")
        add(f"{root}/{S.MODELS}/../../../../escaped.pc", b"evil")
        add(f"/{root}/{S.PC_FILE}", b"absolute")
        add(f"{root}/LICENSE", kind=tarfile.SYMTYPE, link="/etc/passwd")
    destination = tmp_path / "cache" / "llp"
    destination.parent.mkdir()
    S._extract_needed(sdist, destination)
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file() or p.is_symlink())
    assert files == [f"cache/llp/{S.PC_FILE}", "sdist.tar.gz"]


def test_a_download_with_the_wrong_checksum_is_refused(tmp_path: Path, monkeypatch) -> None:
    def fake_download(_sdist, folder: Path) -> Path:
        (folder / S.SDIST_NAME).write_bytes(b"not the sdist")
        return folder / S.SDIST_NAME

    monkeypatch.setattr(sdist_module, "_pip_download", fake_download)
    with pytest.raises(DatasetError, match="expected 4aec4179"):
        S.fetch_llp26(tmp_path)


# ------------------------------------------------------------------------------------------------ model
def test_the_real_model_loads_and_its_points_are_the_meshes_nodes() -> None:
    model = S.load_model(models())
    assert model.mean.shape == (9675,) and model.modes.shape == (9675, 26) and model.n_modes == 25
    assert (models().parent.parent.parent / "LICENSE").read_text().startswith("Mozilla Public License Version 2.0")
    femur = S.load_model(models()).draw(0, sd=0)["femur"]
    geof = json.loads((models().parent.parent.parent / S.FEMUR_MEAN_GEOF).read_text())["field_parameters"]
    atlas = np.array([[float(geof[k][f"dim {d}"]) for d in range(3)] for k in sorted(geof)])
    np.testing.assert_allclose(femur, atlas, atol=1e-6)


def test_bone_surfaces_are_closed_and_outward() -> None:
    surfaces = S.bone_surfaces(S.load_model(models()).draw(0, sd=0), models())
    assert set(surfaces) == {"femur", "patella", "tibia", "fibula"}
    volumes = {}
    for bone, (pts, tris) in surfaces.items():
        assert M.open_edges(tris) == 0, bone
        a, b, c = pts[tris[:, 0]], pts[tris[:, 1]], pts[tris[:, 2]]
        volumes[bone] = np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6000.0
    assert 300 < volumes["femur"] < 800 and 200 < volumes["tibia"] < 500  # whole bones, ml
    assert 8 < volumes["patella"] < 40 and 20 < volumes["fibula"] < 100


def test_an_accepted_draw_gives_four_bones_in_lps() -> None:
    nodes, image, info = accepted()
    arr = sitk.GetArrayFromImage(image)
    assert image.GetPixelID() == sitk.sitkUInt8 and image.GetDirection() == (1, 0, 0, 0, 1, 0, 0, 0, 1)
    assert set(np.unique(arr)) == {0, 1, 2, 4, 5, 6, 7, 8}
    vol = info["volumes_ml"]
    assert 50 < vol["femur"] < 500 and 50 < vol["tibia"] < 500 and 5 < vol["patella"] < 40 and vol["fibula"] > 3
    assert all(v <= V.OVERLAP_LIMIT_ML for v in info["overlaps_ml"].values())
    centre = {v: np.array(image.TransformContinuousIndexToPhysicalPoint(np.argwhere(arr == v).mean(0)[::-1].tolist()))
              for v in (5, 6, 7, 8)}
    assert centre[5][2] > centre[6][2] + 50  # femur superior (+z) to the tibia
    assert centre[7][1] < centre[5][1] - 10  # patella anterior (-y)
    assert centre[8][0] > centre[6][0] + 5  # left knee: fibula lateral = +x (left)
    assert image.GetSize()[2] in (2 * V.HALF_LENGTH_MM + 1, 2 * V.HALF_LENGTH_MM + 2)
    right, _ = S.rasterize(S.load_model(models()).draw(ACCEPTED_SEED, side="right"), 1.0, models())
    r = sitk.GetArrayFromImage(right)
    fib, tib = (right.TransformContinuousIndexToPhysicalPoint(np.argwhere(r == v).mean(0)[::-1].tolist())[0]
                for v in (8, 6))
    assert fib < tib - 5  # right knee: fibula lateral = -x


def test_interpenetrating_bones_are_refused() -> None:
    nodes, _, _ = accepted()
    pushed = dict(nodes)
    pushed["tibia_fibula"] = nodes["tibia_fibula"] + [0.0, 0.0, 8.0]  # tibia 8 mm up into the femur
    with pytest.raises(V.DrawRefused, match="femur/tibia") as refusal:
        S.rasterize(pushed, 1.0, models())
    assert refusal.value.overlaps["femur/tibia"] > V.OVERLAP_LIMIT_ML
    a = np.zeros((10, 10, 10), bool)
    a[2:8, 2:8, 2:8] = True
    assert V.overlap_ml({"femur": a, "tibia": np.roll(a, 3, axis=0)}, 1.0) == {"femur/tibia": 0.108}
    with pytest.raises(V.DrawRefused):
        V.check_overlap({"femur": a, "tibia": np.roll(a, 1, axis=0)}, 2.0)  # 180 voxels of 8 ul = 1.44 ml


def test_seed_ranges_are_disjoint() -> None:
    assert S.TRAIN_FIRST_SEED < S.VAL_FIRST_SEED < S.TEST_FIRST_SEED
    with pytest.raises(DatasetError, match="below"):
        S.write_shape_maps(Path("/nonexistent"), 1, S.VAL_FIRST_SEED, role="train")


def test_written_maps_are_accepted_by_prepare(tmp_path: Path) -> None:
    lines = []
    sources = S.write_shape_maps(tmp_path, 2, S.TRAIN_FIRST_SEED, log=lines.append)
    assert [s.id for s in sources][0].startswith("llp26_left_") and sources[1].id.startswith("llp26_right_")
    assert all(isinstance(s, SourceMap) and s.path.is_file() and s.role == "train" for s in sources)
    assert sources[0].path.name == f"llp26-left-{int(sources[0].id.rsplit('_', 1)[1])}.nrrd"
    assert "refused" in lines[-1] and "accepted" in lines[-1]
    if "meta" in SourceMap.__dataclass_fields__:
        assert sources[0].meta["licence"] == "MPL-2.0" and sources[0].meta["side"] == "left"
    image, entry = prepare_map(sources[0])
    assert entry["voxels"]["femur"] > 0 and entry["voxels"]["tibia"] > 0 and entry["has_fibula"]
