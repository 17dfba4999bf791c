"""Small file helpers shared by the library and the trainer: checksums, JSON records, permissions.

Permissions of files written atomically:

``tempfile.mkstemp`` and ``mkdtemp`` create private entries (0600, 0700) so that nobody can read a half-written
file; after the rename that privacy would stay, and a model, case or segmentation in a shared lab folder would be
unreadable to colleagues. ``usual_permissions`` gives them what a plain ``open()``/``mkdir()`` would have given
under the user's umask, before they are renamed into place.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable

CHUNK = 1 << 20  # bytes read at a time when hashing (model weights, sdists)
# Every temporary file or folder the library creates beside a result starts with this, so that one left by a
# killed process is recognisably ours: ``remove_stale_temps`` deletes those older than ``STALE_TEMP_S``.
TEMP_PREFIX = ".kneeseg-tmp-"
STALE_TEMP_S = 15 * 60


def _umask() -> int:
    """The process umask. Linux tells it in /proc without changing it; elsewhere it is set and restored at
    once (``os.umask`` is the only portable reader, and the moment in between is a race with other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def usual_permissions(path: str | os.PathLike) -> None:
    """Sets ``path`` (and, for a folder, everything in it) to 0666/0777 minus the umask."""
    mask = _umask()
    path = Path(path)
    entries = [path, *path.rglob("*")] if path.is_dir() else [path]
    for entry in entries:
        entry.chmod((0o777 if entry.is_dir() else 0o666) & ~mask)


def sha256_of(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in chunks (weights and archives need not fit in memory twice)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def read_json_object(path: Path, error: type[Exception], what: str) -> dict:
    """The JSON object in ``path``; a missing, unreadable or malformed file, or one holding something other
    than an object, raises ``error`` with a message naming ``what`` it should have been."""
    if not path.is_file():
        raise error(f"{path}: {what} is missing")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{path}: {what} is malformed ({e})") from e
    if not isinstance(data, dict):
        raise error(f"{path}: {what} must hold a JSON object")
    return data


def write_atomically(path: str | os.PathLike, write: Callable[[Path], None], suffix: str = ".tmp") -> Path:
    """Lets ``write`` fill a temporary file beside ``path``, then renames it into place: a reader (or a crash)
    never sees half a file, and two writers never share a temporary name. ``suffix`` keeps the extension that
    writers choosing their format by file name (ITK, MRML storage nodes) need."""
    path = Path(path)
    remove_stale_temps(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{path.name}-", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        usual_permissions(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def write_text_atomically(path: str | os.PathLike, text: str) -> Path:
    """``write_atomically`` for UTF-8 text (JSON records, model cards)."""
    return write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def remove_stale_temps(folder: str | os.PathLike, older_than_s: float = STALE_TEMP_S) -> list[Path]:
    """Removes our temporaries (``TEMP_PREFIX``…) in ``folder`` last modified over ``older_than_s`` ago: what a
    killed run left. Younger ones may belong to a run in progress and are kept. Returns what was removed."""
    import shutil
    import time

    removed = []
    try:
        entries = [e for e in Path(folder).iterdir() if e.name.startswith(TEMP_PREFIX)]
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        try:
            if now - entry.lstat().st_mtime < older_than_s:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
        except OSError:
            continue
    return removed
