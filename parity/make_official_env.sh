#!/usr/bin/env bash
# Make the environment in which parity/record_references.py runs the OFFICIAL
# TUNA code (facebookresearch/tuna-2) to record parity references.
#
#   bash parity/make_official_env.sh DIR [SOURCE]
#
# DIR     where to put the checkout (DIR/tuna-2) and the venv (DIR/venv).
# SOURCE  a git URL or a local path/git dir of the official repository;
#         default https://github.com/facebookresearch/tuna-2.
#
# Environment knobs:
#   PYTHON           interpreter for the venv (default python3; the first references were made with 3.11.7)
#   TORCH_SPEC       default torch==2.13.0 (a requirement or a local wheel file)
#   TORCH_INDEX_URL  e.g. https://download.pytorch.org/whl/cpu, where plain PyPI would give a CUDA build
#   TORCHVISION_SPEC default torchvision==0.28.0 (the release paired with torch 2.13; installed --no-deps)
#   OFFICIAL_COMMIT  default the audited commit below
set -euo pipefail

DIR=${1:?usage: make_official_env.sh DIR [SOURCE]}
SOURCE=${2:-https://github.com/facebookresearch/tuna-2}
COMMIT=${OFFICIAL_COMMIT:-b53594e308095b573c31be46f24ea62936f3c440}
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
TORCHVISION_SPEC=${TORCHVISION_SPEC:-torchvision==0.28.0}

mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
REPO="$DIR/tuna-2"
VENV="$DIR/venv"

# 1. The official code at the pinned commit. Only the python package, configs
#    and data_examples/ are needed; a partial mirror that lacks some binary
#    blob (e.g. assets/visual.png) is tolerated by checking out file by file.
if [ ! -d "$REPO/.git" ]; then
  git clone --no-checkout --quiet "$SOURCE" "$REPO"
fi
git -C "$REPO" fetch --quiet origin "$COMMIT" 2>/dev/null || true
if ! git -C "$REPO" checkout --quiet --force "$COMMIT" 2>/dev/null; then
  echo "full checkout failed (missing blobs?); checking out available files one by one" >&2
  git -C "$REPO" ls-tree -r --format='%(objectname) %(path)' "$COMMIT" |
    while read -r obj path; do
      if git -C "$REPO" cat-file -e "$obj" 2>/dev/null; then
        mkdir -p "$REPO/$(dirname "$path")"
        git -C "$REPO" cat-file blob "$obj" >"$REPO/$path"
      else
        echo "  skipped (blob absent): $path" >&2
      fi
    done
  git -C "$REPO" update-ref --no-deref HEAD "$COMMIT"  # so `git rev-parse HEAD` names the files' commit
fi
echo "official checkout: $REPO @ $(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo "$COMMIT (files)")"

# 2. The venv with the versions pinned by the official pyproject.toml.
#    torch goes in first and is then held fixed by a constraint file so that
#    no later requirement can replace it (e.g. by a CUDA build).
"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install --quiet --upgrade "pip<25.3" "setuptools>=68,<81" wheel
if [ -n "${TORCH_INDEX_URL:-}" ]; then
  "${PIP[@]}" install --quiet --index-url "$TORCH_INDEX_URL" "$TORCH_SPEC"
else
  "${PIP[@]}" install --quiet "$TORCH_SPEC"
fi
TORCH_VERSION=$("$VENV/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])')
echo "torch==$TORCH_VERSION" >"$DIR/constraints.txt"
# torchvision: only its python transforms are used (the recorder stubs its C-op
# registrations), so --no-deps keeps it from touching torch.
"${PIP[@]}" install --quiet --no-deps "$TORCHVISION_SPEC"
"${PIP[@]}" install --quiet -c "$DIR/constraints.txt" \
  "transformers==4.52.4" "tokenizers" "diffusers==0.35.1" "timm==1.0.19" \
  "einops==0.8.1" "torchdiffeq==0.2.5" "torchtnt" "hydra-core>=1.3" \
  "omegaconf==2.3.0" "pillow" "numpy<2" "tqdm" "huggingface-hub" "safetensors" \
  "accelerate>=0.29" "setuptools>=68,<81" "sentencepiece" "protobuf"
"$VENV/bin/python" - <<'PY'
import diffusers, torch, transformers
print(f"venv ok: torch {torch.__version__}, transformers {transformers.__version__}, "
      f"diffusers {diffusers.__version__}")
PY
echo "next: $VENV/bin/python parity/record_references.py --official $REPO --variant all --output OUT"
