#!/usr/bin/env bash
# Tests tuna-hf at the lowest supported versions (ci/lowest.txt) in a virtual environment of its own: the parity,
# pipeline, conversion, LoRA/training, modeling, processing and compatibility suites. The environment is reused between runs.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${TUNA_LOWEST_VENV:-.venv-lowest}"
[ -x "$venv/bin/python" ] || python -m venv "$venv"
"$venv/bin/python" -c "import torch" 2>/dev/null || "$venv/bin/pip" install -q torch==2.13.0
"$venv/bin/pip" install -q -c ci/lowest.txt -e ".[test]"
"$venv/bin/python" -m pytest -p no:cacheprovider tests/test_parity.py tests/test_pipeline_parity.py \
    tests/test_conversion.py tests/test_training.py tests/test_pipelines.py tests/test_modeling.py \
    tests/test_processing.py tests/test_compat.py "$@"
