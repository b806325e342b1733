"""The real-engine tier for weight folding: a plain vLLM engine (no persona_lens worker extension,
no persona_lens import in its process) serves the folded checkpoint of the embedded model and
gives the same greedy tokens (fp32) as HF runtime steering with ``positions="all"``.

Run: ``OMP_NUM_THREADS=1 VLLM_CPU_KVCACHE_SPACE=1 .venv-vllm/bin/python -m pytest -q -m vllm
tests/test_vllm_fold.py``. Skipped where vLLM is not importable (the main ``.venv``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed (scripts/setup_vllm.sh)"),
]

from persona_lens.fold import fold  # noqa: E402
from persona_lens.generation import generate_ids  # noqa: E402
from persona_lens.models import load_model  # noqa: E402
from persona_lens.steering import Steering  # noqa: E402
from persona_lens.vectors import PersonaVector  # noqa: E402

NEW_TOKENS = 16
LAYER, ALPHA = 10, 12.0
PROMPTS = ["What is the capital of France?", "Tell me a joke about computers.", "Why is the sky blue?",
           "Write a haiku about autumn."]

# A fresh interpreter with vLLM only: the folded folder is an ordinary checkpoint to it.
PLAIN_VLLM = r"""
import json, sys
from transformers import AutoTokenizer
from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt
folder, prompts, new_tokens = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
tok = AutoTokenizer.from_pretrained(folder)
ids = [tok(tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True),
           add_special_tokens=False)["input_ids"] for p in prompts]
llm = LLM(model=folder, dtype="float32", enforce_eager=True, max_model_len=512, max_num_batched_tokens=64,
          block_size=32)
outs = llm.generate([TokensPrompt(prompt_token_ids=i) for i in ids],
                    SamplingParams(temperature=0.0, max_tokens=new_tokens), use_tqdm=False)
assert "persona_lens" not in sys.modules, "the plain vLLM process imported persona_lens"
print("RESULT " + json.dumps({"prompt_ids": ids, "new_ids": [list(o.outputs[0].token_ids) for o in outs]}))
"""


@pytest.fixture(scope="module")
def hf():
    return load_model("default", device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def vector(hf):
    g = torch.Generator().manual_seed(7)
    rows = torch.randn(30, 576, generator=g)
    return PersonaVector(rows / rows.norm(dim=1, keepdim=True), {"persona": "random", "model_id": "smollm2"})


def hf_ids(hf, steering=None):
    return [g.response_ids for g in generate_ids(hf, PROMPTS, max_new_tokens=NEW_TOKENS, steering=steering,
                                                 progress=False)]


def test_plain_vllm_serves_the_folded_checkpoint_like_runtime_steering(tmp_path, hf, vector):
    fold(hf, vector, [LAYER], ALPHA, tmp_path / "folded", progress=False)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
               HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-c", PLAIN_VLLM, str(tmp_path / "folded"), json.dumps(PROMPTS),
                           str(NEW_TOKENS)], capture_output=True, text=True, env=env, timeout=900, cwd=tmp_path)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    result = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])
    stops = {hf.tokenizer.eos_token_id, *([hf.original_model.generation_config.eos_token_id] if isinstance(
        hf.original_model.generation_config.eos_token_id, int) else hf.original_model.generation_config.eos_token_id
        or [])}
    cut = [[t for t in row[:next((i for i, t in enumerate(row) if t in stops), len(row))]]
           for row in result["new_ids"]]
    steered = hf_ids(hf, Steering.from_vector(vector, [LAYER], ALPHA, "all"))
    assert cut == steered
    assert steered != hf_ids(hf), "the steering must change the greedy tokens for this test to mean anything"
