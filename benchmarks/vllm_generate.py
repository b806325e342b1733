"""vLLM generation: (1) contrastive generation on vLLM vs the HF path, rows/s; (2) steered vLLM with
N distinct personas in one batch vs the same batch unsteered, generated tokens/s.

Run in the vLLM venv (``scripts/setup_vllm.sh``), e.g. on CPU:
    OMP_NUM_THREADS=1 VLLM_CPU_KVCACHE_SPACE=1 .venv-vllm/bin/python benchmarks/vllm_generate.py

Rows are the first ``--rows`` contrastive items of a builtin persona (pos/neg system prompt x
question, exactly what ``persona-lens extract`` generates), greedy, fp32, ``--max-new-tokens``.
(1) baseline: :func:`persona_lens.generation.generate_ids` (HF ``generate``, ``--batch-size`` rows
per call, the contrastive default 8); ours: ``VLLMBackend.generate_ids`` (all rows, one engine
call). Both stop at EOS; the script checks and reports that their tokens are identical.
(2) baseline: the vLLM batch unsteered; ours: row ``i`` steered by persona ``i % --personas``
(random directions of norm ``--norm`` at ``--layer``, positions ``response``), one engine call.
Steering changes where rows stop, so (2) compares generated tokens/s.
Prefix caching is off so repeats do not reuse the previous repeat's prompt KV. Engine boot and
model load are not timed (reported). Variants run alternately, medians of ``--repeats``.
Times are wall clock (vLLM works in other processes: process CPU time would miss it).
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from _measure import emit, environment, log, median, time_call

from persona_lens.generation import contrastive_items, generate_ids
from persona_lens.interop.vllm import VLLMBackend
from persona_lens.models import load_model
from persona_lens.personas.library import load_persona
from persona_lens.steering import Steering


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--persona", default="evil")
    p.add_argument("--rows", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=8, help="HF rows per generate call")
    p.add_argument("--personas", type=int, default=8)
    p.add_argument("--layer", type=int, default=None, help="steered layer (default: n_layers // 2)")
    p.add_argument("--norm", type=float, default=4.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-model-len", type=int, default=1024)
    p.add_argument("--threads", type=int, default=1, help="torch threads for the HF baseline")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # stdout holds only result lines
    torch.set_num_threads(args.threads)
    spec = load_persona(args.persona)
    items = contrastive_items(spec)[: args.rows]
    prompts = [[{"role": "system", "content": it["system"]}, {"role": "user", "content": it["question"]}]
               for it in items]
    t0 = time.perf_counter()
    engine = VLLMBackend(args.model, dtype="float32", max_model_len=args.max_model_len, enable_prefix_caching=False)
    _ = engine.llm
    boot_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    hf = load_model(args.model, dtype=torch.float32)
    load_s = time.perf_counter() - t0
    log(f"engine boot {boot_s:.1f}s, HF load {load_s:.1f}s, {len(prompts)} rows")
    layer = engine.n_layers // 2 if args.layer is None else args.layer
    g = torch.Generator().manual_seed(0)
    personas = torch.randn(args.personas, engine.d_model, generator=g)
    personas = personas / personas.norm(dim=1, keepdim=True) * args.norm
    steering = Steering({layer: personas[torch.arange(len(prompts)) % args.personas]}, "response")
    n = args.max_new_tokens
    variants = {
        "hf": lambda: generate_ids(hf, prompts, max_new_tokens=n, batch_size=args.batch_size, progress=False),
        "vllm": lambda: engine.generate_ids(prompts, max_new_tokens=n),
        "vllm_steered": lambda: engine.generate_ids(prompts, steering, max_new_tokens=n),
    }
    engine.generate_ids(prompts[:2], steering.select([0, 1]), max_new_tokens=2)  # warm-up, untimed
    seconds: dict[str, list[float]] = {k: [] for k in variants}
    results: dict[str, list] = {}
    for _ in range(args.repeats):
        for name, fn in variants.items():
            s, out = time_call(fn, "cpu")
            seconds[name].append(s)
            results[name] = out
            log(f"{name}: {s:.2f}s")
    tokens = {k: sum(len(g.response_ids) for g in v) for k, v in results.items()}
    med = {k: median(v) for k, v in seconds.items()}
    identical = sum(a.response_ids == b.response_ids for a, b in zip(results["hf"], results["vllm"])) / len(prompts)
    env = environment("cpu", torch.float32)
    import vllm

    env["vllm"] = vllm.__version__
    rows_s = {k: len(prompts) / med[k] for k in ("hf", "vllm")}
    ratio = rows_s["vllm"] / rows_s["hf"]
    emit("vllm_contrastive_generate",
         f"contrastive generation {args.model}: HF {rows_s['hf']:.2f} rows/s, vLLM {rows_s['vllm']:.2f} rows/s, "
         f"ratio {ratio:.2f} (median of {args.repeats}; {len(prompts)} rows x <= {n} tokens; "
         f"token-identical rows {identical:.0%})",
         {"rows": len(prompts), "max_new_tokens": n, "hf_batch_size": args.batch_size,
          "baseline_rows_per_s": rows_s["hf"], "ours_rows_per_s": rows_s["vllm"], "ratio": ratio,
          "identical_rows": identical, "seconds": seconds, "boot_s": boot_s, **env})
    tok_s = {k: tokens[k] / med[k] for k in ("vllm", "vllm_steered")}
    sratio = tok_s["vllm_steered"] / tok_s["vllm"]
    emit("vllm_steered_personas",
         f"vLLM {args.personas} distinct personas in one batch (layer {layer}, response): unsteered "
         f"{tok_s['vllm']:.1f} tok/s, steered {tok_s['vllm_steered']:.1f} tok/s, ratio {sratio:.2f} "
         f"(median of {args.repeats}; rows/s {len(prompts) / med['vllm']:.2f} vs {len(prompts) / med['vllm_steered']:.2f})",
         {"personas": args.personas, "layer": layer, "norm": args.norm, "baseline_tokens_per_s": tok_s["vllm"],
          "ours_tokens_per_s": tok_s["vllm_steered"], "ratio": sratio, "tokens": tokens, "seconds": seconds, **env})
    engine.close()


if __name__ == "__main__":
    main()
