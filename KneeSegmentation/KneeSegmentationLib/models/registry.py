"""The model registry: which model versions are installed, which one is the default, and rollback.

Models are found under roots (the bundled ``Resources/Models`` and the user's folder); the default is the
version a ``selection.json`` names, else the newest bundled version (or the one a ``DEFAULT`` file pins).
Everything here reads cards only (``models.card``), never weights, so it runs without torch.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

from .. import paths
from ..errors import ModelError
from ..files import write_text_atomically
from .card import CARD_FILE, ModelCard, read_card, verify_weights, versions_in


@dataclass(frozen=True)
class ModelEntry:
    """A model version found on disk, for pickers and ``kneeseg info``."""

    name: str
    version: int
    path: Path
    card: ModelCard


def list_models(roots: Iterable[Path] | None = None) -> list[ModelEntry]:
    """All readable model versions under ``roots`` (bundled and user roots by default), sorted by name and
    version. Unreadable folders are skipped here; loading them reports why."""
    roots = list(roots) if roots is not None else [paths.bundled_models_root(), paths.user_models_root()]
    found: list[ModelEntry] = []
    for root in roots:
        if not Path(root).is_dir():
            continue
        for name_dir in sorted(p for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith(".")):
            for v in versions_in(name_dir):
                path = name_dir / f"v{v}"
                try:
                    card = read_card(path)
                except ModelError:
                    continue
                found.append(ModelEntry(card.name, card.version, path, card))
    return sorted(found, key=lambda e: (e.name, e.version))


SELECTION_FILE = "selection.json"  # in the user models root: the version the user (or a retrain) made default


def selected_model_path(roots: Iterable[Path] | None = None) -> Path | None:
    """The model folder named by the first ``selection.json`` found in ``roots`` (default: the user models
    root), or None. The file is written by ``select_default_model``; a stale entry is ignored."""
    roots = list(roots) if roots is not None else [paths.user_models_root()]
    for root in roots:
        path = Path(root) / SELECTION_FILE
        if not path.is_file():
            continue
        try:
            chosen = json.loads(path.read_text(encoding="utf-8")).get("path")
        except (OSError, ValueError, AttributeError):
            continue
        if chosen and (Path(chosen) / CARD_FILE).is_file():
            return Path(chosen)
    return None


def select_default_model(model_dir: Path | str, root: Path | str | None = None,
                         roots: Iterable[Path] | None = None) -> Path:
    """Makes ``model_dir`` the default model (``selection.json`` in ``root``, default the user models root,
    written atomically). Rollback is selecting an older version; the models themselves are not touched.

    Refused (``ModelError``): a model whose weights fail their checksum, and, when the caller passes the
    ``roots`` its ``default_model`` searches (every front end does), a folder outside them, where the selection
    would change nothing."""
    root = Path(root) if root is not None else paths.user_models_root()
    model_dir = Path(model_dir).resolve()
    allowed = list(roots) if roots is not None else None
    if allowed is not None and not any(Path(r).resolve() in model_dir.parents for r in allowed):
        raise ModelError(f"{model_dir} is not in a model root ({', '.join(map(str, dict.fromkeys(allowed)))}); "
                         "copy the version folder there (or pass --root) before selecting it")
    card = verify_weights(model_dir)
    root.mkdir(parents=True, exist_ok=True)
    data = {"path": str(model_dir), "tag": card.tag, "selected": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    return write_text_atomically(root / SELECTION_FILE, json.dumps(data, indent=2) + "\n")


def next_version(name: str, roots: Iterable[Path] | None = None) -> int:
    """The next free version number of the family ``name`` across all roots (bundled and user), so that a
    fine-tuned model never shares a tag with a bundled one."""
    roots = list(roots) if roots is not None else [paths.bundled_models_root(), paths.user_models_root()]
    on_disk = [v for root in roots for v in versions_in(Path(root) / name)]  # stray empty folders too
    return max([e.version for e in list_models(roots) if e.name == name] + on_disk, default=0) + 1


def default_model(roots: Iterable[Path] | None = None) -> ModelEntry:
    """The model selected in a ``selection.json`` of ``roots`` (see ``select_default_model``); else the newest
    version of the bundled model family unless a ``DEFAULT`` file in the name folder pins one."""
    entries = list_models(roots)
    if not entries:
        raise ModelError("no KneeSegmentation model found; install the extension's bundled model or pass --model")
    roots = list(roots) if roots is not None else [paths.bundled_models_root(), paths.user_models_root()]
    chosen = selected_model_path(roots)
    if chosen is not None:
        for e in entries:
            if e.path.resolve() == chosen.resolve():
                return e
    name = entries[0].name
    pinned = None
    for e in entries:
        pin_file = e.path.parent / "DEFAULT"
        if pin_file.is_file():
            pinned = pin_file.read_text().strip()
    if pinned:
        for e in entries:
            if e.path.name == pinned and e.path.parent.name == name:
                return e
    return max((e for e in entries if e.name == name), key=lambda e: e.version)
