"""The model store: a version folder's weights (``model.safetensors``) loaded into a network, or written.

Weights are read with ``safetensors``, which cannot execute code; a pickle (``.pt``/``.pth``/``.ckpt``) is
refused before it is opened by torch. A version folder is created by an atomic rename and never written
again, so no model is ever overwritten. This is the only model module that imports torch: callers import it
where they need the weights (the card and the registry are in ``models.card`` and ``models.registry``).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..learn.children import exit_if_orphaned
from ..errors import ModelError
from ..files import TEMP_PREFIX, sha256_of, usual_permissions
from .card import CARD_FILE, WEIGHTS_FILE, ModelCard, refuse_pickles, verify_weights, versions_in
from ..names import check_name, check_version, printable
from .network import UNet3D, build_network


@dataclass
class LoadedModel:
    card: ModelCard
    network: UNet3D
    path: Path


def load_model(path: Path | str, device: str | torch.device = "cpu") -> LoadedModel:
    """Loads a model folder (or its ``model.json`` / ``model.safetensors``) safely.

    Refuses pickles, checks the weights' SHA-256 against the card, and checks every tensor's name and shape
    against the network the card describes, so a broken or hostile file fails with a ``ModelError``.
    """
    path = Path(path)
    if path.is_file():
        refuse_pickles(path)
        path = path.parent
    if not path.is_dir():
        raise ModelError(f"model not found: {path}")
    card = verify_weights(path)
    weights = path / WEIGHTS_FILE
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelError(f"{weights}: not a valid safetensors file ({e})") from e
    net = build_network(card.plan)
    why = state_mismatch(net.state_dict(), state)
    if why:
        raise ModelError(f"{weights}: weights do not fit the network in the card: {why}")
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelError(f"{weights}: weights do not fit the network in the card: {str(e).splitlines()[0]}") from e
    net.eval().to(device)
    return LoadedModel(card=card, network=net, path=path)


def state_mismatch(expected: dict, found: dict) -> str | None:
    """Which tensors of ``found`` are missing, unexpected or of the wrong shape for ``expected``, by name."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [f"{k} is {tuple(found[k].shape)}, expected {tuple(expected[k].shape)}"
              for k in expected if k in found and tuple(found[k].shape) != tuple(expected[k].shape)]
    parts = ([f"missing tensor(s) {', '.join(missing[:3])}" + (" …" if len(missing) > 3 else "")] if missing else []) + \
            ([f"unexpected tensor(s) {', '.join(unexpected[:3])}" + (" …" if len(unexpected) > 3 else "")]
             if unexpected else []) + shapes[:3]
    return printable("; ".join(parts)) if parts else None


def save_model(network: torch.nn.Module, card: ModelCard, root: Path | str, version: int | None = None) -> Path:
    """Writes a new version folder ``root/<name>/v<N>`` atomically and returns it.

    ``version=None`` takes the next free number. The folder is assembled under a temporary name in the same
    directory and renamed into place; if ``v<N>`` exists already this raises instead of overwriting.
    """
    check_name(card.name, "model name")
    name_dir = Path(root) / card.name
    name_dir.mkdir(parents=True, exist_ok=True)
    if version is None:
        version = max(versions_in(name_dir), default=0) + 1  # a stray empty v<N> folder counts as taken
    check_version(version)
    final = name_dir / f"v{version}"
    if final.exists():
        raise ModelError(f"{final} exists already; models are never overwritten")
    tmp = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}v{version}-", dir=name_dir))
    try:
        state = {k: v.detach().to("cpu").contiguous() for k, v in network.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE))
        card.version = version
        card.weights_sha256 = sha256_of(tmp / WEIGHTS_FILE)
        (tmp / CARD_FILE).write_text(json.dumps(card.to_dict(), indent=2) + "\n", encoding="utf-8")
        usual_permissions(tmp)
        exit_if_orphaned()  # a fine-tuning child whose parent died writes nothing (see learn/children.py)
        try:
            if final.exists():  # os.rename would replace an empty folder: a stray one is not ours to take
                raise FileExistsError(final)
            os.rename(tmp, final)  # atomic; fails if ``final`` appeared meanwhile (non-empty dir)
        except OSError as e:
            raise ModelError(f"{final} exists already; models are never overwritten") from e
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
