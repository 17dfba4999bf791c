"""Retraining in a child process: a new version appears beside an intact parent, Stop leaves nothing partial,
and the default model follows the user's selection (rollback)."""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import SimpleITK as sitk

from KneeSegmentationLib.learn.cases import save_training_case
from KneeSegmentationLib.files import sha256_of
from KneeSegmentationLib.models.card import ModelCard, ModelPlan, Preprocessing
from KneeSegmentationLib.models.registry import default_model, next_version, select_default_model
from KneeSegmentationLib.models.store import save_model
from KneeSegmentationLib.models.network import UNet3D, UNetConfig
from KneeSegmentationLib.learn.children import process_group_alive
from KneeSegmentationLib.learn.retrain import RetrainJob
from KneeSegmentationLib.learn.compare import decide_default, split_cases, user_metrics_for
from KneeSegmentationLib.learn.status import RetrainSettings, read_progress
from phantom import centered_grid, phantom_image, phantom_labels
from trainer_data import make_tiny_dataset

# The smallest run the trainer accepts: 16^3 crops, one sample per step, validation only at the end.
TINY_TRAINER_ARGS = ("--crop", "16,16,16", "--batch", "1", "--warmup", "1", "--val-every", "100000",
                     "--val-cases", "1", "--log-every", "1", "--checkpoint-every", "100000", "--threads", "1")


def tiny_parent(root: Path) -> Path:
    card = ModelCard(name="tiny-retrain", version=0, description="test parent",
                     plan=ModelPlan(UNetConfig(features=(4, 8)), Preprocessing((4.0,) * 3, (24,) * 3, "LPS")))
    return save_model(UNet3D(card.network).eval(), card, root)


def folder_digest(folder: Path) -> dict:
    return {p.name: sha256_of(p) for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("retrain")
    synthetic = make_tiny_dataset(base / "synth")
    bundled = base / "bundled"
    parent = tiny_parent(bundled)
    cases = base / "cases"
    for seed, shift in ((1, 0.0), (2, 6.0)):
        grid = centered_grid((24, 28, 26), (3.0, 3.0, 3.0), center=(shift, 0.0, 0.0))
        truth = phantom_labels(grid, center=(shift, 0.0, 0.0))
        save_training_case(phantom_image(truth, seed=seed), truth, cases, source=f"phantom {seed}",
                           model_tag="tiny-retrain/v1")
    return {"synthetic": synthetic, "bundled": bundled, "parent": parent, "cases": cases}


def settings(setup, user_root: Path, steps: int, **kw) -> RetrainSettings:
    return RetrainSettings(model=setup["parent"], cases=setup["cases"], synthetic=setup["synthetic"],
                           root=user_root, steps=steps, device="cpu", n4=False, trainer_args=TINY_TRAINER_ARGS,
                           **kw)


def test_finetune_in_a_child_process_adds_a_version_and_keeps_the_parent(setup, tmp_path):
    before = folder_digest(setup["parent"])
    user = tmp_path / "user"
    job = RetrainJob(settings(setup, user, steps=3)).start()
    status = job.wait(timeout=240)
    assert status.phase == "done", status.error
    result = status.result
    assert result.model.parent == user / "tiny-retrain" and result.model.name == "v2", result.model
    assert result.tag == "tiny-retrain/v2" and result.parent == "tiny-retrain/v1"
    assert folder_digest(setup["parent"]) == before  # the parent is untouched
    assert status.step == status.total_steps == 3 and len(status.loss) == 3 and status.validation
    # Metrics of both versions on the held-out case, recorded beside each other.
    record = user_metrics_for(result.model, user)
    assert record["held_out"] and len(record["evaluation_cases"]) == 1 and len(record["training_cases"]) == 1
    assert set(record["metrics"]["dice"]) >= {"Femur", "Tibia"} and "score" in record["parent_metrics"]
    # The default is the new version only if it was better; either way it is explicit.
    roots = [setup["bundled"], user]
    expected = result.model if result.made_default else setup["parent"]
    assert default_model(roots).path.resolve() == expected.resolve()
    assert result.made_default == (record["metrics"]["score"] > record["parent_metrics"]["score"])
    # Rollback and forward again, at any time.
    select_default_model(setup["parent"], user)
    assert default_model(roots).path.resolve() == setup["parent"].resolve()
    select_default_model(result.model, user)
    assert default_model(roots).version == 2
    assert not any(p.name.startswith(".") for p in (user / "tiny-retrain").iterdir())


def test_a_version_not_made_default_leaves_the_parent_default_beside_other_model_families(setup, tmp_path):
    """The bundled knee-bones models are installed too (another family, which may sort first): the version
    kept back must still not become this family's default just by being its newest."""
    user = tmp_path / "user"
    status = RetrainJob(settings(setup, user, steps=1, make_default="no")).start().wait(timeout=240)
    assert status.phase == "done", status.error
    assert not status.result.made_default
    assert default_model([setup["bundled"], user]).path.resolve() == setup["parent"].resolve()


def test_stop_mid_training_kills_the_tree_and_leaves_no_partial_model(setup, tmp_path):
    user = tmp_path / "user"
    job = RetrainJob(settings(setup, user, steps=100000)).start()
    work = job._work
    deadline = time.monotonic() + 120
    while job.poll().step < 2:
        assert time.monotonic() < deadline and job.poll().phase == "training", job.poll().error
        time.sleep(0.3)
    # What save_model would have left had it been killed half-way through writing the version:
    partial = user / "tiny-retrain" / ".v2-half"
    partial.mkdir(parents=True)
    (partial / "model.safetensors").write_bytes(b"half")
    t0 = time.monotonic()
    status = job.stop()
    assert time.monotonic() - t0 < 10
    assert status.phase == "stopped" and job.poll().phase == "stopped"
    assert not process_group_alive(job.pid)
    assert not user.exists()  # no version, no temporary folder, no selection: the models root is as before
    assert not work.exists()
    assert job.stop().phase == "stopped"  # stopping twice is harmless


FAKE_PYTHON = """#!{python}
import json, shutil, sys
from pathlib import Path
from KneeSegmentationLib.learn.contract import write_result
args = sys.argv[1:]
opt = lambda name: args[args.index(name) + 1]
if "finetune" in args:  # writes a version and result.json, prints nothing
    new = Path(opt("--root")) / "tiny-retrain" / "v2"
    shutil.copytree(opt("--model"), new)
    Path(opt("--run")).mkdir(parents=True)
    write_result(Path(opt("--run")), new, "tiny-retrain/v2", 7)
else:  # compare
    record = {{"dice": {{"Femur": 0.5}}, "score": 0.5, "cases": []}}
    Path(opt("--out")).write_text(json.dumps([dict(record, tag="tiny-retrain/v1"), dict(record, tag="tiny-retrain/v2")]))
"""


def test_retraining_reads_the_new_model_from_result_json(setup, tmp_path):
    """The contract is the run folder's result.json (KneeSegmentationLib/learn/contract.py), not a line the trainer prints."""
    fake = tmp_path / "fake-python"
    fake.write_text(FAKE_PYTHON.format(python=sys.executable))
    fake.chmod(0o755)
    user = tmp_path / "user"
    status = RetrainJob(settings(setup, user, steps=7, make_default="no", python=str(fake))).start().wait(timeout=60)
    assert status.phase == "done", status.error
    assert status.result.model == (user / "tiny-retrain" / "v2").resolve() and status.result.tag == "tiny-retrain/v2"
    assert not status.result.made_default and user_metrics_for(status.result.model, user)["steps"] == 7


def test_a_finetune_that_writes_no_result_json_fails(setup, tmp_path):
    fake = tmp_path / "fake-python"
    fake.write_text(f"#!{sys.executable}\nprint('fine-tuned model written to /nowhere')\n")
    fake.chmod(0o755)
    status = RetrainJob(settings(setup, tmp_path / "user", steps=1, python=str(fake))).start().wait(timeout=60)
    assert status.phase == "failed" and "fine-tuning failed (exit status 0)" in status.error


def test_progress_is_read_from_the_run_folder(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"steps": 50}))
    (tmp_path / "train.csv").write_text("step,elapsed_s,lr,loss\n10,1.0,0.001,0.9\n20,2.0,0.001,0.7\n30,3")
    (tmp_path / "val.csv").write_text("step,dice_femur,dice_tibia,dice_fibula,score\n20,0.8,0.7,nan,0.75\n")
    step, total, loss, val = read_progress(tmp_path)
    assert (step, total) == (20, 50) and loss == [(10, 0.9), (20, 0.7)]  # the half-written row is skipped
    assert val == [(20, {"dice_femur": 0.8, "dice_tibia": 0.7, "score": 0.75})]


def test_holdout_split_and_default_decision(tmp_path):
    cases = [tmp_path / f"c{i}" for i in range(9)]
    train, held, held_out = split_cases(cases, holdout=True)
    assert held_out and held == [cases[0], cases[4], cases[8]] and sorted(train + held) == cases
    assert split_cases(cases[:1], holdout=True) == (cases[:1], cases[:1], False)
    better, worse = {"score": 0.8}, {"score": 0.7}
    assert decide_default(better, worse, True, "auto")[0] and not decide_default(worse, better, True, "auto")[0]
    assert not decide_default(better, worse, False, "auto")[0]  # no held-out case: the user decides
    assert decide_default(worse, better, True, "yes")[0] and not decide_default(better, worse, True, "no")[0]


def test_selection_file_and_next_version(tmp_path):
    bundled, user = tmp_path / "bundled", tmp_path / "user"
    v1 = tiny_parent(bundled)
    v2 = tiny_parent(bundled)
    assert default_model([bundled, user]).path == v2  # no selection: the newest
    select_default_model(v1, user)
    assert default_model([bundled, user]).path == v1
    assert next_version("tiny-retrain", [bundled, user]) == 3
    os.replace(v1, tmp_path / "moved")  # a stale selection falls back to the newest
    assert default_model([bundled, user]).path == v2
    assert not list(user.glob(".selection-*"))  # written through a temporary file, renamed


def test_missing_inputs_are_refused_before_anything_starts(setup, tmp_path):
    from KneeSegmentationLib.errors import DatasetError

    user = tmp_path / "user"
    with pytest.raises(DatasetError, match="no saved training cases"):
        RetrainJob(replace(settings(setup, user, 1), cases=tmp_path / "none")).start()
    with pytest.raises(DatasetError, match="synthesis dataset .* is missing.*trainer prepare"):
        RetrainJob(replace(settings(setup, user, 1), synthetic=tmp_path / "none")).start()
    assert not user.exists()
