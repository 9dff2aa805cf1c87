#!/usr/bin/env bash
# Installs tuna-hf with its test extras. torch is pinned first: a plain `torch` requirement would pull a
# multi-GB CUDA build on a CPU machine (the package itself only asks for torch>=2.4).
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch" 2>/dev/null || pip install -q torch==2.13.0
pip install -q -e ".[test]"
