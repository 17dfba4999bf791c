"""Model files: safe loading, checksums, versions that are never overwritten."""
from __future__ import annotations

import json
import os
import pickle
import shutil

import pytest
import torch

from KneeSegmentationLib.errors import ModelError
from KneeSegmentationLib.models.card import (CARD_FILE, WEIGHTS_FILE, ModelCard, ModelPlan, Preprocessing, held_out_dice, plain_summary,
                                          read_card)
from KneeSegmentationLib.models.registry import default_model, list_models
from KneeSegmentationLib.models.store import load_model, save_model
from KneeSegmentationLib.models.network import UNet3D, UNetConfig

CONFIG = UNetConfig(features=(4, 8))


def _card(name="m") -> ModelCard:
    return ModelCard(name=name, version=0, plan=ModelPlan(CONFIG, Preprocessing()))


def test_save_and_load_round_trip(tmp_path):
    net = UNet3D(CONFIG)
    path = save_model(net, _card(), tmp_path)
    assert path == tmp_path / "m" / "v1"
    loaded = load_model(path)
    for k, v in net.state_dict().items():
        assert torch.equal(v, loaded.network.state_dict()[k])
    assert loaded.card.weights_sha256 and loaded.card.version == 1


def test_versions_are_never_overwritten(tmp_path):
    first = save_model(UNet3D(CONFIG), _card(), tmp_path)
    before = (first / WEIGHTS_FILE).read_bytes()
    second = save_model(UNet3D(CONFIG), _card(), tmp_path)
    assert second.name == "v2" and (first / WEIGHTS_FILE).read_bytes() == before
    with pytest.raises(ModelError, match="never overwritten"):
        save_model(UNet3D(CONFIG), _card(), tmp_path, version=1)
    assert (first / WEIGHTS_FILE).read_bytes() == before
    assert [e.version for e in list_models([tmp_path])] == [1, 2]
    assert default_model([tmp_path]).version == 2
    assert not [p for p in (tmp_path / "m").iterdir() if p.name.startswith(".")]  # no temp folders left


def test_saved_models_are_readable_by_others_under_the_umask(tmp_path):
    """Written in a private temporary folder, the published version gets the umask's usual permissions, so a
    model in a shared lab folder is readable by colleagues (and private under umask 077)."""
    for mask, folder_mode, file_mode in [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600)]:
        old = os.umask(mask)
        try:
            path = save_model(UNet3D(CONFIG), _card(f"m{mask:o}"), tmp_path)
        finally:
            os.umask(old)
        assert path.stat().st_mode & 0o777 == folder_mode
        assert {f.name: f.stat().st_mode & 0o777 for f in path.iterdir()} == {
            WEIGHTS_FILE: file_mode, CARD_FILE: file_mode}


def test_checksum_mismatch_is_refused(tmp_path):
    path = save_model(UNet3D(CONFIG), _card(), tmp_path)
    data = bytearray((path / WEIGHTS_FILE).read_bytes())
    data[-1] ^= 0xFF
    (path / WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(ModelError, match="checksum mismatch"):
        load_model(path)


class _Hostile:
    """Unpickling this writes a file: the attack a pickled model file can carry."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.target}",))


def test_hostile_pickle_is_refused_and_never_executed(tmp_path):
    target = tmp_path / "pwned.txt"
    good = save_model(UNet3D(CONFIG), _card(), tmp_path / "models")
    payload = pickle.dumps(_Hostile(target))
    # 1) a .pt file handed over directly
    (tmp_path / "model.pt").write_bytes(payload)
    with pytest.raises(ModelError, match="refused"):
        load_model(tmp_path / "model.pt")
    # 2) a pickle disguised as model.safetensors with a matching checksum in its card
    evil = tmp_path / "evil" / "v1"
    shutil.copytree(good, evil)
    (evil / WEIGHTS_FILE).write_bytes(payload)
    card = json.loads((evil / CARD_FILE).read_text())
    import hashlib

    card["weights"]["sha256"] = hashlib.sha256(payload).hexdigest()
    (evil / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(ModelError, match="pickle"):
        load_model(evil)
    # 3) a torch.save archive (zip of pickles)
    torch.save({"x": _Hostile(target)}, tmp_path / "archive.safetensors")
    with pytest.raises(ModelError):
        load_model(tmp_path / "archive.safetensors")
    assert not target.exists()


def test_malformed_cards_and_weights(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_model(tmp_path / "missing")
    path = save_model(UNet3D(CONFIG), _card(), tmp_path)
    (path / CARD_FILE).write_text("{not json")
    with pytest.raises(ModelError, match="model card is malformed"):
        read_card(path)
    (path / CARD_FILE).write_text(json.dumps({"format": "other"}))
    with pytest.raises(ModelError, match="not a KneeSegmentation model card"):
        load_model(path)


def test_weights_that_do_not_fit_the_card_are_refused(tmp_path):
    path = save_model(UNet3D(CONFIG), _card(), tmp_path)
    card = json.loads((path / CARD_FILE).read_text())
    card["network"]["features"] = [8, 16]
    (path / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(ModelError, match="do not fit"):
        load_model(path)


def test_plain_summary_names_the_bones_the_data_and_the_held_out_dice_only():
    """One line for the panel and ``kneeseg info``: no map ids, and training maps' figures left out."""
    card = ModelCard(name="knee-bones", version=3, plan=ModelPlan(UNetConfig(features=(4, 8), out_channels=5)),
                     training={
                         "data_source": "label maps of mskt and LLP26 draws; images synthesized",
                         "data": [{"id": "dess_fibula", "role": "train", "note": ""},
                                  {"id": "t2_left", "role": "val", "note": ""},
                                  {"id": "llp26 x40", "role": "train", "note": "seeds 0..49 (refused draws skipped)"},
                                  {"id": "llp26 x6", "role": "val", "note": "seeds 100..105"}]},
                     metrics={"rendered": {
                         "dess_fibula": {"Fibula": {"dice": 0.10}},  # a training map: not held out
                         "llp26_right_0007": {"Patella": {"dice": 0.20}},  # a training draw (seed 7)
                         "t2_left": {"Femur": {"dice": 0.95}, "Tibia": {"dice": 0.93}},
                         "llp26_left_0101": {"Fibula": {"dice": 0.91}, "Patella": {"dice": 0.93}}}})
    assert held_out_dice(card) == pytest.approx(0.93)
    line = plain_summary(card)
    assert line == ("Knee bones v3 — Femur, Tibia, Fibula, Patella; trained on synthetic MRI from real knee "
                    "anatomy; held-out Dice 0.93")
    assert not any(word in line for word in ("t2_left", "dess", "llp26", "/"))
    tuned = ModelCard(name="knee-bones", version=4, plan=ModelPlan(CONFIG),
                      parent="knee-bones/v3")
    assert held_out_dice(tuned) is None
    assert plain_summary(tuned).endswith("fine-tuned from knee bones v3 on corrected cases; "
                                         "no held-out validation recorded")
