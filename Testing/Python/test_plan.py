"""A model's plan (network + preprocessing + labels) in one object: it survives the model card, the training
configuration and the command line unchanged (a per-axis spacing stays per axis), and every caller builds the
network of a plan the same way (``network.build_network``)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import KneeSegmentationLib
from KneeSegmentationLib.constants import NUM_CLASSES
from KneeSegmentationLib.errors import DatasetError
from KneeSegmentationLib.models.card import CARD_FILE, ModelCard, read_card
from KneeSegmentationLib.models.store import load_model, save_model
from KneeSegmentationLib.models.network import build_network
from KneeSegmentationLib.paths import bundled_models_root
from KneeSegmentationLib.models.plan import ModelPlan, Preprocessing, per_axis_spacing
from KneeSegmentationLib.models.config import UNetConfig

from trainer.__main__ import build_parser
from trainer.config import TrainConfig

ANISO = (1.5, 1.5, 3.0)
REPO = Path(KneeSegmentationLib.__file__).resolve().parents[2]


def _plan(spacing=ANISO) -> ModelPlan:
    return ModelPlan(UNetConfig(out_channels=NUM_CLASSES, features=(4, 8)),
                     Preprocessing(spacing, (24, 24, 32), "LPS", {"lower_percentile": 0.5, "upper_percentile": 99.5}))


def test_a_non_isotropic_plan_survives_the_card_on_disk(tmp_path):
    plan = _plan()
    folder = save_model(build_network(plan), ModelCard(name="aniso", version=0, plan=plan), tmp_path)
    on_disk = json.loads((folder / CARD_FILE).read_text())
    assert on_disk["input"]["spacing_mm"] == [1.5, 1.5, 3.0]
    assert read_card(folder).plan == plan
    assert load_model(folder).card.plan == plan


@pytest.mark.parametrize("version", ["v4", "v5", "v12"])
def test_the_bundled_cards_read_and_write_unchanged_through_the_plan(version):
    """The card format on disk is not changed by the plan object: each bundled card is rewritten identically."""
    path = bundled_models_root() / "knee-bones" / version / CARD_FILE
    data = json.loads(path.read_text(encoding="utf-8"))
    card = ModelCard.from_dict(data)
    assert card.to_dict() == data
    assert card.plan == ModelPlan.from_card_fields(data)


def test_train_config_keeps_a_per_axis_spacing_through_its_plan_and_its_file(tmp_path):
    cfg = TrainConfig(features=(4, 8), spacing_mm=ANISO, patch=(24, 24, 32))
    assert cfg.plan().preprocessing.spacing_mm == ANISO
    cfg.save(tmp_path / "config.json")
    again = TrainConfig.load(tmp_path / "config.json")
    assert again.plan() == cfg.plan() and again.spacing_mm == ANISO


def test_a_run_folder_written_with_one_spacing_number_still_loads_isotropic(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"spacing_mm": 2.0, "features": [4, 8]}))
    assert TrainConfig.load(tmp_path / "config.json").plan().preprocessing.spacing_mm == (2.0, 2.0, 2.0)


def test_a_run_continuing_a_model_takes_its_plan_and_grows_only_its_classes():
    three_bones = ModelPlan(UNetConfig(out_channels=4, features=(4, 8)), _plan().preprocessing)
    cfg = TrainConfig(features=(16, 32), spacing_mm=1.0, patch=(96, 96, 96))
    cfg.take_plan(three_bones)
    assert cfg.plan() == three_bones.with_classes(NUM_CLASSES)
    assert cfg.plan().preprocessing == three_bones.preprocessing


@pytest.mark.parametrize("text, spacing", [("1.5", (1.5, 1.5, 1.5)), ("1.5,1.5,3", ANISO)])
def test_the_spacing_option_takes_one_number_or_three(text, spacing, tmp_path):
    a = build_parser().parse_args(["train", "--dataset", str(tmp_path), "--run-dir", str(tmp_path),
                                   "--spacing", text])
    assert a.spacing == spacing


def test_the_spacing_option_refuses_two_numbers(tmp_path, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--dataset", str(tmp_path), "--run-dir", str(tmp_path),
                                   "--spacing", "1,2"])
    assert "three" in capsys.readouterr().err
    with pytest.raises(ValueError):
        per_axis_spacing((1.0, 2.0))


def test_the_class_weights_option_reaches_the_run_config(tmp_path):
    from trainer.__main__ import _config

    a = build_parser().parse_args(["train", "--dataset", str(tmp_path), "--run-dir", str(tmp_path),
                                   "--class-weights", "1,1,1,1.5,1.25"])
    assert _config(a).class_weights == (1.0, 1.0, 1.0, 1.5, 1.25)
    default = build_parser().parse_args(["train", "--dataset", str(tmp_path), "--run-dir", str(tmp_path)])
    assert _config(default).class_weights == TrainConfig().class_weights


@pytest.mark.parametrize("text", ["1,1,1,3", "1,1,1,3,0", "1,1,x,3,2"])
def test_the_class_weights_option_refuses_a_wrong_count_or_a_weight_not_above_zero(text, tmp_path, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--dataset", str(tmp_path), "--run-dir", str(tmp_path),
                                   "--class-weights", text])
    assert "positive weights" in capsys.readouterr().err


def test_the_synthesis_option_reaches_the_run_config_checked_and_repeatable(tmp_path):
    from trainer.__main__ import _config

    a = build_parser().parse_args(["train", "--dataset", str(tmp_path), "--run-dir", str(tmp_path),
                                   "--synthesis", "FAT_SUPPRESSED_P=0", "--synthesis", "NOISE_STD=[0, 0.05]"])
    cfg = _config(a)
    assert cfg.synthesis == {"FAT_SUPPRESSED_P": 0.0, "NOISE_STD": (0.0, 0.05)}
    cfg.save(tmp_path / "config.json")
    assert TrainConfig.load(tmp_path / "config.json").synthesis == {"FAT_SUPPRESSED_P": 0.0, "NOISE_STD": [0.0, 0.05]}
    default = build_parser().parse_args(["train", "--dataset", str(tmp_path), "--run-dir", str(tmp_path)])
    assert _config(default).synthesis == {}


@pytest.mark.parametrize("text, message", [
    ("FAT_SUPRESSED_P=0", "not a synthesis range"), ("overridden=1", "not a synthesis range"),
    ("FAT_SUPPRESSED_P", "NAME=VALUE"), ("FAT_SUPPRESSED_P=abc", "a number or a list"),
    ("NOISE_STD=0.1", "2 numbers are expected"), ("FAT_SUPPRESSED_P=[0]", "a number is expected"),
    ("BONE_CROP_WEIGHTS=1", "a dict is expected"), ("ELASTIC_CONTROL_POINTS=2.5", "a whole number")])
def test_the_synthesis_option_refuses_a_typo_or_a_value_of_another_kind(text, message, tmp_path, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--dataset", str(tmp_path), "--run-dir", str(tmp_path),
                                   "--synthesis", text])
    assert message in capsys.readouterr().err


def test_a_run_draws_with_its_synthesis_overrides_records_them_and_restores_the_ranges(dataset, tmp_path):
    """``train --synthesis``: the generator made inside the run reads the overridden range, the exported card
    records the value the run drew from, and the module's ranges are the defaults again afterwards."""
    from trainer_data import tiny_config

    from trainer import ranges
    from trainer.dataset import load_dataset
    from trainer.export import export
    from trainer.generator import Generator
    from trainer.train import train

    default_p, default_crop_p = ranges.FAT_SUPPRESSED_P, ranges.BONE_CROP_P
    with ranges.overridden({"BONE_CROP_P": 0.0}):
        assert Generator(load_dataset(dataset), (4.0, 4.0, 4.0), (16, 16, 16)).bone_crop_p == 0.0
    assert ranges.BONE_CROP_P == default_crop_p
    cfg = tiny_config(dataset, tmp_path / "run", steps=2, val_every=2, workers=0)
    cfg.synthesis = {"FAT_SUPPRESSED_P": 1.0}
    train(cfg, resume=False, log=lambda *_: None)
    assert ranges.FAT_SUPPRESSED_P == default_p
    card = load_model(export(tmp_path / "run", root=tmp_path / "models", name="fs")).card
    assert card.training["synthesis"]["FAT_SUPPRESSED_P"] == 1.0
    assert card.training["settings"]["synthesis"] == {"FAT_SUPPRESSED_P": 1.0}


def test_only_build_network_constructs_the_network():
    """Training, export, evaluation and loading build the network of a plan through ``build_network``; nobody
    else in the library or the trainer calls ``UNet3D(...)`` from loose settings."""
    callers = []
    for folder in (REPO / "KneeSegmentation" / "KneeSegmentationLib", REPO / "trainer"):
        for path in folder.rglob("*.py"):
            where = path.relative_to(REPO).as_posix()
            if where != "KneeSegmentation/KneeSegmentationLib/models/network.py" and re.search(
                    r"\bUNet3D\(", path.read_text(encoding="utf-8")):
                callers.append(where)
    assert callers == []


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from trainer_data import make_tiny_dataset

    return make_tiny_dataset(tmp_path_factory.mktemp("plands"))


def test_the_generator_renders_along_each_axis_of_a_per_axis_spacing(dataset):
    """A per-axis spacing reaches the renderer: an isotropic tuple renders exactly what one number does, a
    coarser z draws a different image from the same random state."""
    from trainer.dataset import load_dataset
    from trainer.generator import Generator

    maps = load_dataset(dataset)

    def draw(spacing):
        return Generator(maps, spacing, (16, 16, 16)).sample(np.random.default_rng(1), torch.Generator().manual_seed(1))

    assert np.array_equal(draw(4.0).image, draw((4.0, 4.0, 4.0)).image)
    assert not np.array_equal(draw(4.0).image, draw((4.0, 4.0, 8.0)).image)


def test_the_exported_model_and_the_library_loader_build_the_same_network_for_a_plan(dataset, tmp_path):
    """A run with a per-axis spacing, exported: the card holds the run's plan, the loader's network has the run's
    best weights, and it computes what the run's own best model (``evaluate --run-dir``) computes."""
    from trainer_data import tiny_config

    from trainer.export import export
    from trainer.runfolder import BEST, best_model, load_checkpoint
    from trainer.train import train

    cfg = tiny_config(dataset, tmp_path / "run", spacing_mm=(4.0, 4.0, 6.0), steps=2, workers=0)
    train(cfg, resume=False, log=lambda *_: None)
    out = export(tmp_path / "run", root=tmp_path / "models", name="aniso")
    loaded, run_model = load_model(out), best_model(tmp_path / "run")
    assert loaded.card.plan == run_model.card.plan == cfg.plan()
    assert loaded.card.preprocessing.spacing_mm == (4.0, 4.0, 6.0)
    best = load_checkpoint(tmp_path / "run" / BEST)["model"]
    fresh = build_network(cfg.plan()).state_dict()
    state = loaded.network.state_dict()
    assert list(state) == list(fresh) and all(state[k].shape == fresh[k].shape for k in fresh)
    assert all(torch.equal(state[k], best[k]) for k in best)
    x = torch.randn(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(loaded.network(x), run_model.network(x))


def test_export_can_take_the_last_steps_weights_instead_of_the_best(dataset, tmp_path):
    """``export --weights last``: the card holds last.pt's weights and says so; best stays the default."""
    from trainer_data import tiny_config

    from trainer.export import export
    from trainer.runfolder import BEST, LAST, load_checkpoint
    from trainer.train import train

    cfg = tiny_config(dataset, tmp_path / "run", steps=4, val_every=2, workers=0)
    train(cfg, resume=False, log=lambda *_: None)
    best, last = (load_checkpoint(tmp_path / "run" / name) for name in (BEST, LAST))
    best["model"]["head.weight"] = best["model"]["head.weight"] + 1.0  # tell the two apart whatever the scores
    torch.save(best, tmp_path / "run" / BEST)
    out = export(tmp_path / "run", root=tmp_path / "models", name="last", weights="last")
    state = load_model(out).network.state_dict()
    assert all(torch.equal(state[k], last["model"][k]) for k in last["model"])
    assert load_model(out).card.training["exported"] == {"weights": "last", "step": last["step"]}
    assert f"weights of the last step, {last['step']}" in (out / "MODEL_CARD.md").read_text(encoding="utf-8")
    default = load_model(export(tmp_path / "run", root=tmp_path / "models", name="best")).network.state_dict()
    assert torch.equal(default["head.weight"], best["model"]["head.weight"])
    with pytest.raises(DatasetError, match="weights must be"):
        export(tmp_path / "run", root=tmp_path / "models", name="x", weights="newest")
