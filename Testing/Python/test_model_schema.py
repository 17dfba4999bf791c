"""Every model card we ship or write matches the published card schema (Testing/Data/model-card.schema.json,
MONAIAuto3DSeg's idea), and what the schema refuses the card reader refuses too."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest

from KneeSegmentationLib.errors import ModelError
from KneeSegmentationLib.models.card import ModelCard

REPO = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((REPO / "Testing" / "Data" / "model-card.schema.json").read_text(encoding="utf-8"))
CARDS = sorted((REPO / "Resources" / "Models").glob("*/v*/model.json")) + sorted(
    (REPO / "Testing" / "Data" / "Models").glob("*/v*/model.json"))


def test_the_schema_is_a_valid_schema():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


@pytest.mark.parametrize("path", CARDS, ids=lambda p: "/".join(p.parts[-3:-1]))
def test_shipped_cards_match_the_schema_and_survive_a_round_trip(path):
    card = json.loads(path.read_text(encoding="utf-8"))
    jsonschema.validate(card, SCHEMA)
    jsonschema.validate(ModelCard.from_dict(card).to_dict(), SCHEMA)  # what export writes


BROKEN = {
    "no weights checksum": lambda d: d["weights"].pop("sha256"),
    "unknown architecture": lambda d: d["network"].update(arch="ResNet"),
    "wrong format": lambda d: d.update(format="kneeseg-model/0"),
    "path in the name": lambda d: d.update(name="../evil"),
    "version zero": lambda d: d.update(version=0),
}


@pytest.mark.parametrize("problem", BROKEN)
def test_what_the_schema_refuses_the_reader_refuses(problem):
    card = copy.deepcopy(json.loads(CARDS[0].read_text(encoding="utf-8")))
    BROKEN[problem](card)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(card, SCHEMA)
    with pytest.raises(ModelError):
        ModelCard.from_dict(card)
