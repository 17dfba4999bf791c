"""The training loop: it learns, it resumes exactly, it runs under torchrun (gloo, 2 CPU processes)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from KneeSegmentationLib.models.card import ModelCard
from KneeSegmentationLib.models.network import UNet3D, UNetConfig

from trainer.dataset import load_dataset
from trainer.generator import Generator
from trainer import ranges
from trainer.losses import as_fractions, dice_ce_loss
from trainer.runfolder import BEST, LAST, STOP_FILE, load_checkpoint
from trainer.schedule import lr_factor
from trainer.train import BatchSource, train

from trainer_data import TINY_CROP, TINY_SPACING, make_tiny_dataset, tiny_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("tinyds_train"))


def test_a_few_steps_reduce_the_loss(dataset):
    torch.manual_seed(0)
    cfg = tiny_config(dataset, "unused")
    gen = Generator(load_dataset(dataset, ("train",)), TINY_SPACING, TINY_CROP)
    x, y = BatchSource(cfg, gen).batch(np.random.default_rng(0), torch.Generator().manual_seed(0))
    net = UNet3D(UNetConfig(features=(4, 8)))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    weights = torch.tensor(cfg.class_weights)
    losses = []
    for _ in range(15):
        loss, _ = dice_ce_loss(net(x), y, weights)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0]


def test_schedule_warms_up_then_decays():
    f = [lr_factor(s, 10, 100, 0.02) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:])) and f[-1] == pytest.approx(0.02, abs=1e-3)


def _weights(run: Path) -> dict:
    return load_checkpoint(run / LAST)["model"]


def test_resume_gives_the_same_state(dataset, tmp_path):
    straight = tmp_path / "straight"
    train(tiny_config(dataset, straight, steps=5), resume=False, log=lambda *_: None)

    split = tmp_path / "split"
    split.mkdir()
    (split / STOP_FILE).touch()  # stops cleanly after the first step, with a checkpoint
    first = train(tiny_config(dataset, split, steps=5), resume=False, log=lambda *_: None)
    assert first["steps"] == 1
    (split / STOP_FILE).unlink()
    second = train(tiny_config(dataset, split, steps=5), resume=True, log=lambda *_: None)
    assert second["steps"] == 5

    a, b = load_checkpoint(straight / LAST), load_checkpoint(split / LAST)
    assert a["step"] == b["step"] == 5
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["optimizer"]["state"][0]["exp_avg"].equal(b["optimizer"]["state"][0]["exp_avg"])
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"]
    assert a["rng"][0]["numpy"] == b["rng"][0]["numpy"]
    assert (straight / BEST).is_file() and (straight / "curves.png").is_file()
    rows = (split / "train.csv").read_text().strip().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4", "5"]


def test_ddp_with_gloo_on_two_cpu_processes(dataset, tmp_path):
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "trainer",
           "train", "--dataset", str(dataset), "--run-dir", str(run), "--features", "4,8", "--spacing", "4",
           "--patch", "24,24,24", "--crop", "16,16,16", "--steps", "2", "--warmup", "1", "--val-every", "2",
           "--val-cases", "2", "--checkpoint-every", "1", "--threads", "1", "--fresh"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    ck = load_checkpoint(run / LAST)
    assert ck["step"] == 2 and len(ck["rng"]) == 2
    assert ck["rng"][0]["numpy"] != ck["rng"][1]["numpy"]  # each rank draws its own samples
    assert "world_size': 2" in out.stdout + out.stderr


def test_batches_are_the_same_from_a_worker_process_and_in_process(dataset):
    from trainer.train import batches_from

    cfg = tiny_config(dataset, "unused")
    gen = Generator(load_dataset(dataset, ("train",)), TINY_SPACING, TINY_CROP)
    source = BatchSource(cfg, gen)
    cfg.workers = 0
    local = batches_from(source, cfg, rank=0, start=5)
    cfg.workers = 1
    worker = batches_from(source, cfg, rank=0, start=5)
    for _ in range(2):
        (xa, ya), (xb, yb) = next(local), next(worker)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_a_three_bone_model_grows_a_patella_head_that_changes_nothing():
    from KneeSegmentationLib.models.network import config_of_state, with_classes

    torch.manual_seed(0)
    old = UNet3D(UNetConfig(out_channels=4, features=(4, 8))).eval()
    grown = with_classes(old, 5).eval()
    assert config_of_state(grown.state_dict()) == UNetConfig(out_channels=5, features=(4, 8))
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        a, b = torch.softmax(old(x), 1), torch.softmax(grown(x), 1)
    assert torch.equal(a.argmax(1), b.argmax(1)) and float(b[:, 4].max()) < 1e-3
    with pytest.raises(ValueError):
        with_classes(grown, 4)


def test_a_widened_network_computes_what_the_narrow_one_did():
    from KneeSegmentationLib.models.network import config_of_state, widened

    torch.manual_seed(0)
    old = UNet3D(UNetConfig(features=(4, 8, 16))).eval()
    x = torch.randn(1, 1, 16, 16, 16)
    exact, jittered = widened(old, (8, 12, 16), noise=0.0).eval(), widened(old, (8, 12, 16)).eval()
    assert config_of_state(exact.state_dict()) == UNetConfig(features=(8, 12, 16))
    with torch.no_grad():
        a, b, c = old(x), exact(x), jittered(x)
    assert torch.allclose(a, b, atol=1e-4), float((a - b).abs().max())
    assert not torch.equal(b, c) and float((a - c).abs().max()) < 0.1 * float(a.abs().max())  # copies can diverge
    for bad in ((2, 8, 16), (8, 16)):  # narrower; another number of stages
        with pytest.raises(ValueError):
            widened(old, bad)


def test_training_can_start_from_a_widened_model(dataset, tmp_path):
    from KneeSegmentationLib.models.store import save_model
    from trainer.train import starting_network

    cfg = tiny_config(dataset, tmp_path / "run")
    narrow = UNet3D(UNetConfig(features=cfg.features)).eval()
    card = ModelCard(name="narrow", version=1, plan=cfg.plan())
    cfg.init_model = str(save_model(narrow, card, tmp_path / "models"))
    cfg.features = tuple(2 * f for f in cfg.features)
    assert starting_network(cfg).config.features == cfg.features


def test_widen_without_a_model_to_widen_is_refused(dataset, tmp_path):
    from trainer.__main__ import main

    with pytest.raises(SystemExit, match="--widen widens a trained model"):
        main(["train", "--dataset", str(dataset), "--run-dir", str(tmp_path / "run"), "--widen", "8,16"])
    assert not (tmp_path / "run").exists()


def test_a_model_regridded_trains_and_exports_on_the_new_grid_with_a_window_of_the_same_field(dataset, tmp_path):
    """``train --init-model M --regrid S``: the run starts from M's weights on an S-mm grid, its window scaled to
    M's field of view (rounded up to whole network blocks), and the model it exports is planned on that grid."""
    from KneeSegmentationLib.models.store import load_model, save_model
    from trainer.__main__ import main
    from trainer.export import export

    cfg = tiny_config(dataset, tmp_path / "run")
    card = ModelCard(name="coarse", version=1, plan=cfg.plan())
    parent = save_model(UNet3D(UNetConfig(features=cfg.features)).eval(), card, tmp_path / "models")
    finer = tuple(s * 0.75 for s in cfg.spacing_mm)
    main(["train", "--dataset", str(dataset), "--run-dir", str(tmp_path / "run"), "--init-model", str(parent),
          "--regrid", ",".join(str(s) for s in finer), "--crop", ",".join(map(str, cfg.crop)), "--steps", "2",
          "--val-every", "1000", "--val-cases", "2", "--checkpoint-every", "2", "--workers", "0", "--threads", "1"])
    plan = load_model(export(tmp_path / "run", root=tmp_path / "out", name="fine")).card.preprocessing
    assert plan.spacing_mm == finer
    assert cfg.patch == (24, 24, 24) and cfg.plan().network.size_divisor == 2
    assert plan.patch_size == (32, 32, 32)  # 24 voxels of 4 mm = 32 voxels of 3 mm: the same 96 mm


def test_regrid_without_a_model_is_refused_and_a_grid_out_of_range_too(dataset, tmp_path):
    from trainer.__main__ import main
    from trainer.config import TrainConfig

    with pytest.raises(SystemExit, match="--regrid moves a trained model"):
        main(["train", "--dataset", str(dataset), "--run-dir", str(tmp_path / "run"), "--regrid", "1.3"])
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="0.3-5 mm"):
        TrainConfig().regrid(0.1)
    from KneeSegmentationLib.errors import ModelError

    cfg = TrainConfig()
    with pytest.raises(ModelError, match="--regrid 0.4"):  # a 360-voxel window: refused before training
        cfg.regrid(0.4)
    assert (cfg.spacing_mm, cfg.patch) == (TrainConfig().spacing_mm, TrainConfig().patch)


def test_cpu_training_uses_bfloat16_where_the_cpu_has_it():
    from trainer.train import autocast
    from KneeSegmentationLib.segment.precision import cpu_has_fast_bf16

    cfg = tiny_config("unused", "unused")
    net = UNet3D(UNetConfig(features=(4, 8)))
    with autocast(torch.device("cpu"), cfg):
        out = net(torch.randn(1, 1, 16, 16, 16))
    assert out.dtype == (torch.bfloat16 if cpu_has_fast_bf16() else torch.float32)
    cfg.amp = False
    with autocast(torch.device("cpu"), cfg):
        assert net(torch.randn(1, 1, 16, 16, 16)).dtype == torch.float32


def test_soft_targets_are_fitted_by_predicting_the_fractions():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 6, 7, 8)
    target = torch.randint(0, 5, (2, 6, 7, 8))
    weights = torch.tensor([1.0, 1.0, 1.0, 3.0, 2.0])
    _, hard = dice_ce_loss(logits, target, weights)
    _, soft = dice_ce_loss(logits, as_fractions(target, 5), weights)
    assert abs(hard["ce"] - soft["ce"]) < 1e-5  # one-hot fractions: the hard cross-entropy
    # Both terms are smallest where the prediction is the fractions, borders included.
    fractions = torch.softmax(2 * torch.randn(2, 5, 6, 7, 8), dim=1)
    _, at_truth = dice_ce_loss(torch.log(fractions), fractions, weights)
    sharper = torch.log(fractions) * 3  # the same classes, each voxel pushed towards 0 or 1
    _, sharp = dice_ce_loss(sharper, fractions, weights)
    assert at_truth["dice_loss"] < 1e-3 < sharp["dice_loss"]
    assert at_truth["ce"] < sharp["ce"]


def test_training_on_soft_targets_learns_and_batches_them_as_fractions(dataset, tmp_path):
    cfg = tiny_config(dataset, tmp_path / "soft", steps=4, synthesis={"SUPERSAMPLE": 2, "SOFT_TARGETS": True})
    with ranges.overridden(cfg.synthesis):
        gen = Generator(load_dataset(dataset, ("train",)), TINY_SPACING, TINY_CROP)
    x, y = BatchSource(cfg, gen).batch(np.random.default_rng(0), torch.Generator().manual_seed(0))
    assert y.shape == (2, 5, *TINY_CROP) and y.is_floating_point()
    assert torch.allclose(y.sum(1), torch.ones(()), atol=1e-5)
    torch.manual_seed(0)
    net = UNet3D(UNetConfig(features=(4, 8)))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss, _ = dice_ce_loss(net(x), y, torch.tensor(cfg.class_weights))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0]
    result = train(cfg, resume=False, log=lambda *_: None)  # the run itself, its worker process included
    assert result["steps"] == 4 and (tmp_path / "soft" / LAST).is_file()


def test_a_fine_target_scores_the_probabilities_where_the_pipeline_interpolates_them():
    from trainer.losses import finer_probabilities

    # A border at 3.6 voxels along x, seen at the fine points (+-1/4 voxel around each centre).
    n, border = 8, 3.6
    fine_x = (torch.arange(2 * n) + 0.5) / 2 - 0.5
    fine = (fine_x < border).long().view(1, 1, 1, -1).expand(1, 2, 2, 2 * n).contiguous()

    def logits_with_border_at(e):
        x = torch.arange(n, dtype=torch.float32)
        bone = 3.0 * (e - x)
        return torch.stack([torch.zeros(n), bone]).view(1, 2, 1, 1, n).expand(1, 2, 1, 1, n).contiguous()

    weights = torch.ones(2)
    right, _ = dice_ce_loss(logits_with_border_at(border), fine, weights)
    off, _ = dice_ce_loss(logits_with_border_at(border + 0.5), fine, weights)
    assert right < off
    probs = finer_probabilities(logits_with_border_at(border), 2)
    assert probs.shape == (1, 2, 2, 2, 2 * n)
    assert torch.equal(probs[0, 1, 0, 0] > 0.5, fine[0, 0, 0] == 1)  # its argmax is the fine target
    with pytest.raises(ValueError, match="whole multiple"):
        dice_ce_loss(logits_with_border_at(border), fine[..., :-1], weights)


def test_training_on_fine_targets_batches_them_at_the_supersampled_points(dataset, tmp_path):
    cfg = tiny_config(dataset, tmp_path / "fine", steps=3, synthesis={"SUPERSAMPLE": 2, "FINE_TARGETS": True})
    with ranges.overridden(cfg.synthesis):
        gen = Generator(load_dataset(dataset, ("train",)), TINY_SPACING, TINY_CROP)
    x, y = BatchSource(cfg, gen).batch(np.random.default_rng(0), torch.Generator().manual_seed(0))
    assert x.shape == (2, 1, *TINY_CROP) and y.shape == (2, *(2 * c for c in TINY_CROP)) and y.dtype == torch.int64
    result = train(cfg, resume=False, log=lambda *_: None)
    assert result["steps"] == 3 and (tmp_path / "fine" / LAST).is_file()
