"""Model files: safetensors weights plus a JSON card of metadata, in a versioned folder.

Layout: ``<models root>/<name>/v<N>/`` holding ``model.safetensors`` and ``model.json``. The JSON records
the labels, the exact preprocessing (spacing, patch size, normalization), the network hyper-parameters, the
SHA-256 of the weights, training summary and validation metrics. Weights are read with ``safetensors``,
which cannot execute code; a pickle (``.pt``/``.pth``/``.ckpt``) is refused before it is opened by torch.
A version folder is created by an atomic rename and never written again, so no model is ever overwritten.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .constants import BONES, SUPPORTED_CLASS_COUNTS
from .errors import ModelError
from .children import exit_if_orphaned
from .files import TEMP_PREFIX, read_json_object, sha256_of, usual_permissions, write_text_atomically
from .limits import check_model_card
from .names import check_name, check_version, printable
from .network import UNet3D, UNetConfig

FORMAT = "kneeseg-model/1"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "model.json"
VERSION_DIR = re.compile(r"^v(\d+)$")
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin")
# First bytes of a pickle (protocol 2+) and of a zip archive (torch.save's default container).
PICKLE_MAGICS = (b"\x80", b"PK\x03\x04")


@dataclass
class Preprocessing:
    """How an image must be prepared before the network sees it; stored in the card under ``input``."""

    spacing_mm: tuple[float, float, float] = (1.5, 1.5, 1.5)
    patch_size: tuple[int, int, int] = (96, 96, 96)
    orientation: str = "LPS"  # the grid axes follow the patient axes (identity direction in ITK/LPS terms)
    normalization: dict[str, float] = field(default_factory=lambda: {"lower_percentile": 1.0, "upper_percentile": 99.0})

    def to_dict(self) -> dict:
        return {
            "spacing_mm": list(self.spacing_mm),
            "patch_size": list(self.patch_size),
            "orientation": self.orientation,
            "normalization": dict(self.normalization),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        return cls(
            spacing_mm=tuple(float(s) for s in d["spacing_mm"]),
            patch_size=tuple(int(s) for s in d["patch_size"]),
            orientation=str(d.get("orientation", "LPS")),
            normalization={k: float(v) for k, v in d.get("normalization", {}).items()}
            or {"lower_percentile": 1.0, "upper_percentile": 99.0},
        )


@dataclass
class ModelCard:
    """Everything about a model except its weights."""

    name: str
    version: int
    network: UNetConfig
    preprocessing: Preprocessing
    labels: dict[int, str] = field(default_factory=dict)  # empty: the network's classes, in ``BONES`` order
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    parent: str | None = None  # "name/vN" this model was fine-tuned from
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    weights_sha256: str = ""

    def __post_init__(self) -> None:
        if not self.labels:
            self.labels = {b.label: b.name for b in BONES[: self.network.out_channels - 1]}

    @property
    def tag(self) -> str:
        return f"{self.name}/v{self.version}"

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "name": self.name,
            "version": self.version,
            "created": self.created,
            "description": self.description,
            "parent": self.parent,
            "labels": {str(k): v for k, v in sorted(self.labels.items())},
            "network": self.network.to_dict(),
            "input": self.preprocessing.to_dict(),
            "weights": {"file": WEIGHTS_FILE, "sha256": self.weights_sha256},
            "training": self.training,
            "metrics": self.metrics,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "ModelCard":
        if d.get("format") != FORMAT:
            raise ModelError(f"not a KneeSegmentation model card (format {d.get('format')!r}, expected {FORMAT!r})")
        try:
            check_name(d["name"], "model name")
            check_version(d["version"])
            check_model_card(d["input"]["spacing_mm"], d["input"]["patch_size"], d["network"]["features"])
            return cls(
                name=str(d["name"]),
                version=int(d["version"]),
                network=UNetConfig.from_dict(d["network"]),
                preprocessing=Preprocessing.from_dict(d["input"]),
                labels={int(k): str(v) for k, v in d["labels"].items()},
                created=str(d.get("created", "")),
                parent=d.get("parent"),
                training=dict(d.get("training", {})),
                metrics=dict(d.get("metrics", {})),
                description=str(d.get("description", "")),
                weights_sha256=str(d["weights"]["sha256"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ModelError(f"model card is malformed: {printable(repr(e))}") from e


@dataclass
class LoadedModel:
    card: ModelCard
    network: UNet3D
    path: Path


def _refuse_pickles(path: Path) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ModelError(f"{path.name}: pickled model files are refused (they can execute code); "
                         "use a KneeSegmentation model folder with model.safetensors and model.json")
    with open(path, "rb") as f:
        head = f.read(4)
    if any(head.startswith(m) for m in PICKLE_MAGICS):
        raise ModelError(f"{path.name}: this is a pickle or torch.save archive, not safetensors; refused "
                         "because loading it could execute code")


def check_labels(card: ModelCard, path: Path) -> None:
    """A model's classes must be the first bones of ``BONES`` in label order (3 bones for models made before
    the Patella class, 4 since), so a label value means the same bone in every model."""
    n = card.network.out_channels
    expected = {b.label: b.name for b in BONES[: n - 1]}
    if n not in SUPPORTED_CLASS_COUNTS or card.labels != expected:
        names = "/".join(b.name for b in BONES)
        raise ModelError(f"{path}: the model's labels {card.labels} do not match {names} "
                         f"(a model segments the first 3 or all {len(BONES)} of them)")


def read_card(model_dir: Path | str) -> ModelCard:
    """Reads and validates ``model.json`` of a version folder (does not touch the weights)."""
    model_dir = Path(model_dir)
    if not (model_dir / CARD_FILE).is_file():
        raise ModelError(f"{model_dir}: no {CARD_FILE} (not a KneeSegmentation model folder)")
    return ModelCard.from_dict(read_json_object(model_dir / CARD_FILE, ModelError, "the model card"))


def load_model(path: Path | str, device: str | torch.device = "cpu") -> LoadedModel:
    """Loads a model folder (or its ``model.json`` / ``model.safetensors``) safely.

    Refuses pickles, checks the weights' SHA-256 against the card, and checks every tensor's name and shape
    against the network the card describes, so a broken or hostile file fails with a ``ModelError``.
    """
    path = Path(path)
    if path.is_file():
        _refuse_pickles(path)
        path = path.parent
    if not path.is_dir():
        raise ModelError(f"model not found: {path}")
    card = read_card(path)
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelError(f"{path}: {WEIGHTS_FILE} is missing")
    _refuse_pickles(weights)
    digest = sha256_of(weights)
    if digest != card.weights_sha256:
        raise ModelError(f"{weights}: checksum mismatch (file {digest[:12]}…, card {card.weights_sha256[:12]}…); "
                         "the file is damaged or was modified")
    check_labels(card, path)
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelError(f"{weights}: not a valid safetensors file ({e})") from e
    net = UNet3D(card.network)
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


def verify_weights(model_dir: Path | str) -> ModelCard:
    """The card of ``model_dir`` once its weights' checksum and labels are checked (without loading torch
    tensors): what ``select`` needs before it makes a version the default."""
    model_dir = Path(model_dir)
    card = read_card(model_dir)
    weights = model_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelError(f"{model_dir}: {WEIGHTS_FILE} is missing")
    _refuse_pickles(weights)
    digest = sha256_of(weights)
    if digest != card.weights_sha256:
        raise ModelError(f"{weights}: checksum mismatch (file {digest[:12]}…, card {card.weights_sha256[:12]}…); "
                         "the file is damaged or was modified")
    check_labels(card, model_dir)
    return card


def _versions_in(name_dir: Path) -> list[int]:
    if not name_dir.is_dir():
        return []
    return sorted(int(m.group(1)) for p in name_dir.iterdir() if (m := VERSION_DIR.match(p.name)) and p.is_dir())


def save_model(network: torch.nn.Module, card: ModelCard, root: Path | str, version: int | None = None) -> Path:
    """Writes a new version folder ``root/<name>/v<N>`` atomically and returns it.

    ``version=None`` takes the next free number. The folder is assembled under a temporary name in the same
    directory and renamed into place; if ``v<N>`` exists already this raises instead of overwriting.
    """
    check_name(card.name, "model name")
    name_dir = Path(root) / card.name
    name_dir.mkdir(parents=True, exist_ok=True)
    if version is None:
        version = max(_versions_in(name_dir), default=0) + 1  # a stray empty v<N> folder counts as taken
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
        exit_if_orphaned()  # a fine-tuning child whose parent died writes nothing (see children.py)
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


@dataclass(frozen=True)
class ModelEntry:
    """A model version found on disk, for pickers and ``kneeseg info``."""

    name: str
    version: int
    path: Path
    card: ModelCard


def bundled_models_root() -> Path:
    """``Resources/Models`` of this checkout, installed extension or pip-installed package."""
    from .resources import resources_root

    return resources_root() / "Models"


def user_models_root() -> Path:
    """Where retrained models go: ``$KNEESEG_USER_MODELS`` or ``~/.kneesegmentation/Models``."""
    env = os.environ.get("KNEESEG_USER_MODELS")
    return Path(env) if env else Path.home() / ".kneesegmentation" / "Models"


def list_models(roots: Iterable[Path] | None = None) -> list[ModelEntry]:
    """All readable model versions under ``roots`` (bundled and user roots by default), sorted by name and
    version. Unreadable folders are skipped here; loading them reports why."""
    roots = list(roots) if roots is not None else [bundled_models_root(), user_models_root()]
    found: list[ModelEntry] = []
    for root in roots:
        if not Path(root).is_dir():
            continue
        for name_dir in sorted(p for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith(".")):
            for v in _versions_in(name_dir):
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
    roots = list(roots) if roots is not None else [user_models_root()]
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
    root = Path(root) if root is not None else user_models_root()
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
    roots = list(roots) if roots is not None else [bundled_models_root(), user_models_root()]
    on_disk = [v for root in roots for v in _versions_in(Path(root) / name)]  # stray empty folders too
    return max([e.version for e in list_models(roots) if e.name == name] + on_disk, default=0) + 1


def default_model(roots: Iterable[Path] | None = None) -> ModelEntry:
    """The model selected in a ``selection.json`` of ``roots`` (see ``select_default_model``); else the newest
    version of the bundled model family unless a ``DEFAULT`` file in the name folder pins one."""
    entries = list_models(roots)
    if not entries:
        raise ModelError("no KneeSegmentation model found; install the extension's bundled model or pass --model")
    roots = list(roots) if roots is not None else [bundled_models_root(), user_models_root()]
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


def format_metrics(metrics: dict, limit: int = 8) -> str:
    """A model's validation metrics in one line for the picker.

    The fixed benchmark (``{"benchmark": {"bones": {bone: {"dice_mean": …}}}}``) comes first: ``"benchmark (21
    held-out cases) Dice Femur 0.930, …"``. The trainer's evaluation (``{"rendered": {map: {bone: {"dice": …, "hd95_mm": …}}}}``) gives the mean Dice per
    evaluated label map and bone, the figure a user compares versions by: ``"Dice t2_left: Femur 0.908, Tibia
    0.910; …"``. Other layouts are flattened, numbers only: ``{"dice": {"Femur": 0.95}, "hd95_mm": 2.1}`` →
    ``"dice Femur 0.950, hd95_mm 2.10"``.
    """
    bench = (metrics or {}).get("benchmark")
    if isinstance(bench, dict) and isinstance(bench.get("bones"), dict) and bench["bones"]:
        return f"benchmark ({bench.get('n_cases', '?')} held-out cases) Dice " + ", ".join(
            f"{bone} {b['dice_mean']:.3f}" for bone, b in bench["bones"].items()
            if isinstance(b, dict) and isinstance(b.get("dice_mean"), (int, float)))
    rendered = (metrics or {}).get("rendered")
    if isinstance(rendered, dict) and rendered:
        per_map = [f"{name}: " + ", ".join(f"{bone} {m['dice']:.3f}" for bone, m in bones.items()
                                           if isinstance(m, dict) and "dice" in m)
                   for name, bones in rendered.items() if isinstance(bones, dict)]
        if per_map:
            return "Dice " + "; ".join(per_map)
    items: list[str] = []

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix} {k}".strip(), v)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            items.append(f"{prefix} {value:.3f}" if abs(value) < 10 else f"{prefix} {value:.1f}")

    walk("", metrics or {})
    return ", ".join(items[:limit]) + (", …" if len(items) > limit else "") if items else "no validation metrics"


_SEED_RANGE = re.compile(r"seeds (\d+)\.\.(\d+)")
_DRAW_SEED = re.compile(r"_(\d+)$")


def _training_maps(card: ModelCard) -> tuple[set[str], list[tuple[int, int]]]:
    """Map ids the card names as training data, and the seed ranges of its training shape-model draws."""
    ids, seeds = set(), []
    for d in card.training.get("data") or []:
        if not isinstance(d, dict) or d.get("role") != "train":
            continue
        ids.add(str(d.get("id", "")))
        if m := _SEED_RANGE.search(str(d.get("note", ""))):
            seeds.append((int(m.group(1)), int(m.group(2))))
    return ids, seeds


def held_out_dice(card: ModelCard) -> float | None:
    """Mean Dice over the bones of the evaluated label maps that were not trained on (None: none recorded).

    The trainer's evaluation also renders a training map (the one with a fibula, under new contrasts and
    deformations); its figures are left out here, since they are not measured on unseen anatomy."""
    rendered = (card.metrics or {}).get("rendered")
    if not isinstance(rendered, dict):
        return None
    train_ids, train_seeds = _training_maps(card)
    values = []
    for map_id, bones in rendered.items():
        seed = _DRAW_SEED.search(map_id)
        trained = map_id in train_ids or (seed and any(a <= int(seed.group(1)) <= b for a, b in train_seeds))
        if not trained and isinstance(bones, dict):
            values += [float(m["dice"]) for m in bones.values() if isinstance(m, dict) and "dice" in m]
    return sum(values) / len(values) if values else None


def plain_summary(card: ModelCard) -> str:
    """The model in one line a radiologist reads at a glance, without dataset ids or file paths:
    ``"Knee bones v2 — Femur, Tibia, Fibula; trained on synthetic MRI from real knee anatomy; held-out Dice 0.91"``.
    """
    name = card.name.replace("-", " ").replace("_", " ").strip().capitalize()
    parts = [f"{name} v{card.version} — " + ", ".join(card.labels[k] for k in sorted(card.labels))]
    source = str(card.training.get("data_source", ""))
    if "synthesi" in source:
        parts.append("trained on synthetic MRI from real knee anatomy")
    if card.parent:
        parent_name, _, parent_version = card.parent.partition("/")
        parts.append(f"fine-tuned from {parent_name.replace('-', ' ')} {parent_version} on corrected cases")
    dice = held_out_dice(card)
    parts.append(f"held-out Dice {dice:.2f}" if dice is not None else "no held-out validation recorded")
    return "; ".join(parts)
