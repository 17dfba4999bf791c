"""The module's self-test bodies (KneeSegmentationLib.scene.selftests) run headless: the same functions that
``KneeSegmentationTest`` runs inside Slicer, here on a real MRML scene from slicer-core.

With the tiny phantom model the "sample" is the phantom written to a NRRD file (the tiny model knows nothing
of real MRI); the real sample is checked for integrity and loading, and segmented with the bundled model
when the tree has one."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from KneeSegmentationLib.scene import selftests
from KneeSegmentationLib.constants import BONES
from KneeSegmentationLib.files import sha256_of
from KneeSegmentationLib.segment.io import write_image
from KneeSegmentationLib.scene.logic import SegmentationLogic, scene_node_ids
from KneeSegmentationLib.models.registry import list_models
from KneeSegmentationLib.paths import bundled_models_root
from KneeSegmentationLib.segment.pipeline import SegmentationSettings

from phantom import phantom

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "Resources" / "SampleData" / "MESE_T2_knee_echo1.nrrd"


@pytest.fixture()
def phantom_sample(tmp_path) -> tuple[Path, selftests.Plausible]:
    """The phantom as an image file, and the bone volumes it must give (truth within a factor of 1.5)."""
    image, labels = phantom(size=(64, 64, 40), spacing=(1.5, 1.5, 2.5), seed=7)
    path = write_image(image, tmp_path / "phantom.nrrd")
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
    truth = sitk.GetArrayFromImage(labels)
    expected = {b.name: float((truth == b.label).sum()) * voxel_ml for b in BONES}
    return path, selftests.Plausible({k: (v / 1.5, v * 1.5) for k, v in expected.items()})


def test_selftest_bodies_on_the_phantom(scene, tiny_model, phantom_sample, tmp_path):
    path, plausible = phantom_sample
    volume = selftests.load_sample(scene, path, name="phantom")
    logic = SegmentationLogic(scene)
    settings = SegmentationSettings(model=tiny_model, device="cpu", n4=False)
    report = selftests.run_all(scene, logic, volume, settings, plausible, tmp_path,
                               cancel_settings=SegmentationSettings(model=tiny_model, device="cpu", n4=False,
                                                                    tta=True))
    print(report)
    assert report.seconds["cancel latency"] < 5.0


def test_selftest_checks_can_fail(scene, tiny_model, phantom_sample, tmp_path):
    """Implausible expectations must fail the self-test (it is not a rubber stamp)."""
    path, _ = phantom_sample
    volume = selftests.load_sample(scene, path)
    impossible = selftests.Plausible({"Femur": (1e6, 2e6)})
    with pytest.raises(AssertionError, match="Femur"):
        selftests.check_segmentation(SegmentationLogic(scene), volume,
                                     SegmentationSettings(model=tiny_model, device="cpu", n4=False), impossible)


def test_real_sample_is_intact_and_loads(scene):
    expected = (SAMPLE.parent / (SAMPLE.name + ".sha256")).read_text().split()[0]
    assert sha256_of(SAMPLE) == expected
    before = scene_node_ids(scene)
    volume = selftests.load_sample(scene, SAMPLE)
    assert scene_node_ids(scene) - before  # added a volume
    image = volume.GetImageData()
    assert image.GetDimensions() == (256, 256, 24)
    assert volume.GetSpacing() == pytest.approx((0.625, 0.625, 4.0), abs=1e-3)
    assert image.GetScalarRange()[1] > 1000


@pytest.mark.skipif(not list_models([bundled_models_root()]), reason="no bundled model in Resources/Models yet")
def test_selftest_bodies_on_the_real_sample_with_the_bundled_model(scene, tmp_path):
    volume = selftests.load_sample(scene, SAMPLE)
    logic = SegmentationLogic(scene, [bundled_models_root()])
    settings = SegmentationSettings(model=None, device="cpu", n4=True)
    report = selftests.run_all(scene, logic, volume, settings, selftests.REAL_SAMPLE, tmp_path,
                               cancel_settings=SegmentationSettings(model=None, device="cpu", n4=False))
    print(report)
