"""The command line: ``kneeseg`` (``entry`` → ``main``), its training commands, batch runs, signals.

``entry`` is the console script's light front door; ``main`` parses and runs the commands; ``training`` adds
the correct-and-retrain ones; ``args`` holds the conventions shared with ``kneeseg-train``; ``batch`` segments
a folder; ``signals`` makes SIGTERM, broken pipes and OS errors end in one line.
"""
