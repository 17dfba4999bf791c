"""Names and paths taken from files we did not write ourselves (model cards, case records, dataset
manifests, selection files): checked before they become part of a path, and cleaned before they are printed.

    check_name(card_name, "model name")        # raises ModelError for "../../tmp/x", "", "a/b", "-x"
    inside(root, root / manifest_entry)        # the resolved path, or an error if it leaves root
    printable("\x1b[2Jhello")                  # "?[2Jhello": a card cannot drive the user's terminal

A name is one path component of letters, digits, ``.``, ``_`` and ``-``, starting with a letter or digit,
at most 64 characters, and never ``..``: it can never climb out of the folder it is joined to.
"""
from __future__ import annotations

import os
import re
import unicodedata
from pathlib import Path

from .errors import KneeSegError, ModelError

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_VERSION = 999_999


def check_name(name: object, what: str = "model name", error: type[KneeSegError] = ModelError) -> str:
    """``name`` if it is a safe single path component (see the module docstring), else raises ``error``."""
    text = name if isinstance(name, str) else ""
    if not NAME_PATTERN.match(text) or ".." in text:
        raise error(f"invalid {what} {printable(repr(name))}: use 1–64 letters, digits, '.', '_' or '-', "
                    "starting with a letter or digit, without '..'")
    return text


def check_version(version: object, error: type[KneeSegError] = ModelError) -> int:
    """A model version: an integer 1…``MAX_VERSION`` (a bool or a float like 2.5 is refused)."""
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= MAX_VERSION:
        raise error(f"invalid model version {printable(repr(version))}: must be an integer 1–{MAX_VERSION}")
    return version


def inside(root: str | os.PathLike, path: str | os.PathLike, what: str = "path",
           error: type[KneeSegError] = KneeSegError) -> Path:
    """``path`` resolved (symbolic links followed) if it lies in ``root``, else raises ``error``."""
    root_r, path_r = Path(root).resolve(), Path(path).resolve()
    if path_r != root_r and root_r not in path_r.parents:
        raise error(f"{what} {printable(str(path))} lies outside {root}; refused")
    return path_r


def relative_entry(root: str | os.PathLike, entry: object, what: str = "entry",
                   error: type[KneeSegError] = KneeSegError) -> Path:
    """``root / entry`` for a relative file name read from a file in ``root`` (a manifest's ``file``),
    refusing absolute paths, ``..`` and anything that resolves outside ``root``."""
    if not isinstance(entry, str) or not entry or os.path.isabs(entry) or ".." in Path(entry).parts:
        raise error(f"{what} {printable(repr(entry))} must be a relative path inside {root}")
    return inside(root, Path(root) / entry, what, error)


def printable(text: object, newlines: bool = False) -> str:
    """``text`` with control characters (terminal escapes, carriage returns, bidi overrides) shown as ``?``;
    tabs become spaces, and newlines too unless ``newlines`` (our own multi-line output) keeps them."""
    out = []
    for ch in str(text):
        if ch == "\n" and newlines:
            out.append(ch)
        elif ch in "\n\t":
            out.append(" ")
        elif unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Zl", "Zp"):
            out.append("?")
        else:
            out.append(ch)
    return "".join(out)
