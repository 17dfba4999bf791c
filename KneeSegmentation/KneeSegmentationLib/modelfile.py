"""The old name of the model modules, kept only for ``Testing/Python/test_bundled_model.py`` until it imports
``modelcard``/``modelregistry``/``modelstore`` itself; nothing in the library, CLI or trainer imports it.

Names resolve lazily (PEP 562), so importing this module imports no torch; only asking for ``load_model`` or
``save_model`` loads ``modelstore`` (and torch), as importing ``modelstore`` would.
"""
from __future__ import annotations

import importlib

_HOMES = {
    "modelcard": ("CARD_FILE", "WEIGHTS_FILE", "ModelCard", "Preprocessing", "format_metrics", "plain_summary",
                  "read_card", "verify_weights"),
    "modelregistry": ("ModelEntry", "default_model", "list_models", "next_version", "select_default_model"),
    "paths": ("bundled_models_root", "user_models_root"),
    "modelstore": ("LoadedModel", "load_model", "save_model"),
}


def __getattr__(name: str):
    for module, names in _HOMES.items():
        if name in names:
            return getattr(importlib.import_module(f".{module}", __package__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
