"""Process-level behaviour of the command-line front ends: signals, broken pipes, OS errors as one line.

    restore = terminate_as_interrupt()   # SIGTERM (kill, a scheduler's timeout) unwinds like Ctrl-C, so the
    try: ...                             # temporary files of an interrupted write are removed by their
    finally: restore()                   # ``finally`` blocks and the user is told what was written
"""
from __future__ import annotations

import errno
import os
import signal
import sys
import threading
from typing import Callable


def terminate_as_interrupt() -> Callable[[], None]:
    """Makes SIGTERM raise KeyboardInterrupt in the main thread; returns the function restoring the old handler.
    A no-op outside the main thread (signal handlers can only be set there)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except (ValueError, OSError):
        return lambda: None
    return lambda: signal.signal(signal.SIGTERM, previous)


def quiet_stdout() -> None:
    """After a BrokenPipeError: point stdout at /dev/null so that the interpreter's final flush is silent."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def os_error_message(e: OSError) -> str:
    """One line for an OSError that escaped the library: the path, what happened and, for the usual causes,
    what to do."""
    where = e.filename if getattr(e, "filename", None) else ""
    what = e.strerror or str(e) or type(e).__name__
    hint = {errno.ENOSPC: "the disk is full; free space or write elsewhere",
            errno.EROFS: "the file system is read-only; write elsewhere",
            errno.EACCES: "permission denied", errno.EDQUOT: "disk quota exceeded"}.get(e.errno)
    text = f"{where}: {what}" if where else what
    return f"{text} ({hint})" if hint and hint != what.lower() else text
