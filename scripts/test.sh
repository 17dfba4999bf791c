#!/usr/bin/env bash
# Sets up the environment with the test tools and the real knee data, then runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
exec .venv/bin/python -m pytest "$@"
