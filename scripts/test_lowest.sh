#!/usr/bin/env bash
# Tests tuna-hf at the lowest supported versions (ci/lowest.txt) in a virtual environment of its own: the full suite,
# as the README's test command runs it at the newest. The environment is reused between runs.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${TUNA_LOWEST_VENV:-.venv-lowest}"
[ -x "$venv/bin/python" ] || python -m venv "$venv"
export PATH="$(cd "$venv" && pwd)/bin:$PATH"  # the README blocks' `python` and `pip` are this environment's too
python -c "import torch" 2>/dev/null || pip install -q torch==2.13.0
pip install -q -c ci/lowest.txt -e ".[test]"
python -m pytest -p no:cacheprovider "$@"
