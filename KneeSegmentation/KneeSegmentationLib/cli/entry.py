"""The ``kneeseg`` console script: a light front door to ``cli.main.main``.

Importing the CLI takes seconds (torch, SimpleITK, VTK); a Ctrl-C or SIGTERM in that time would otherwise end
in a KeyboardInterrupt traceback. Here it ends like any other interrupt: one line, status 130, nothing written.

    python -m KneeSegmentationLib.cli.entry segment knee.nrrd -o knee.seg.nrrd
"""
from __future__ import annotations

import signal
import sys
from typing import Sequence

EXIT_INTERRUPTED = 130


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        from .main import main as cli_main
    except KeyboardInterrupt:
        print("kneeseg: interrupted; nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous)
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
