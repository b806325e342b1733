#!/usr/bin/env python
"""BILLY's projection analysis (Pai et al. 2025, Eq. 5 and its figure), as a script.

For each task set, compares four kinds of condition against the plain prompt:
multi-role prompting (one system prompt naming every persona), steering with each single
persona vector, and steering with the merged vector (BILLY: the plain mean of the raw
vectors). Δa = a_condition − a_none is projected on each persona's unit vector at every layer,
for the last prompt token and for the response mean. The paper reports that multi-role
prompting moves activations positively along v_CRE but negatively along v_ENV, while the
merged vector moves both positively.

Example (BILLY's main configuration; layer 19 = HF hidden_states[20], coefficient 2.0)::

    python analyses/billy_projection.py \\
        --vectors cre.safetensors env.safetensors fut.safetensors fut.safetensors \\
        --layer 19 --alpha 2.0 --tasks aut --n 10 --out runs/billy_projection

``--vectors`` entries may also be built-in persona names (``creative_professional``...): they
are then extracted first (cached under ``OUT/vectors``; ``--extract-*`` options). Writes per
task ``OUT/<task>/projection.{json,csv}``, ``responses.json``, the figures
``projection_{response_mean,last_prompt}.html``, and ``OUT/summary.json`` with the signs that
the paper's claim is about.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

from persona_lens.analysis import projection
from persona_lens.analysis.projection import ProjectionConfig, task_prompts
from persona_lens.extraction import extract
from persona_lens.io import atomic_write_json
from persona_lens.models import load_model
from persona_lens.personas import builtin_names, load_persona
from persona_lens.personas.billy import PAPER_ALPHA, PAPER_LAYER
from persona_lens.vectors import PersonaVector
from persona_lens.viz import projection as projection_viz
from persona_lens.viz import save_figure


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default", help="embedded name, HF id or local path")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None)
    p.add_argument("--vectors", nargs="+", required=True,
                   help="vector files or built-in persona names; repeats count in the merge (BILLY: futurist twice)")
    p.add_argument("--merged", default=None, help="merged vector file (default: plain mean of --vectors)")
    p.add_argument("--layer", type=int, default=PAPER_LAYER,
                   help=f"steering layer (default BILLY's {PAPER_LAYER} = HF hidden_states[{PAPER_LAYER + 1}])")
    p.add_argument("--alpha", type=float, default=PAPER_ALPHA, help=f"steering coefficient (BILLY: {PAPER_ALPHA})")
    p.add_argument("--tasks", nargs="+", default=["aut"], help="'aut' and/or task files (.txt/.jsonl/.json, "
                   "LLM-Discussion AUT layout accepted)")
    p.add_argument("--n", type=int, default=None, help="first N prompts of each task")
    p.add_argument("--positions", default="response", choices=["response", "prompt", "all"])
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--extract-max-new-tokens", type=int, default=64)
    p.add_argument("--extract-questions", type=int, default=None, help="use the first N extraction questions")
    p.add_argument("--out", required=True, help="output folder")
    return p.parse_args(argv)


def load_vectors(args, model, out: Path):

    cache: dict[str, PersonaVector] = {}
    vectors = []
    for item in args.vectors:
        if item not in cache:
            if Path(item).exists():
                cache[item] = PersonaVector.load(item)
            elif item in builtin_names():
                path = out / "vectors" / f"{item}.safetensors"
                if path.exists():
                    cache[item] = PersonaVector.load(path)
                else:
                    spec = load_persona(item)
                    if args.extract_questions:
                        spec = dataclasses.replace(spec, questions=spec.questions[: args.extract_questions])
                    cache[item], _ = extract(model, spec, path, max_new_tokens=args.extract_max_new_tokens,
                                             batch_size=args.batch_size)
            else:
                raise SystemExit(f"--vectors {item!r}: neither a file nor a built-in persona")
        vectors.append(cache[item])
    return vectors


def summarize(result, layer: int) -> dict:
    """Per condition and axis: Δa projection at the steering layer and averaged over layers >= it."""
    li = result.layers.index(layer)
    out = {}
    for pos in result.positions:
        m = result.mean[pos]
        out[pos] = {
            cond: {axis: {"at_layer": round(float(m[ci, ai, li]), 4),
                          "mean_from_layer": round(float(np.nanmean(m[ci, ai, li:])), 4)}
                   for ai, axis in enumerate(result.axes)}
            for ci, cond in enumerate(result.conditions)
        }
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    vectors = load_vectors(args, model, out)
    merged = PersonaVector.load(args.merged) if args.merged else None
    summary = {"model": args.model, "layer": args.layer, "alpha": args.alpha, "vectors": [v.name for v in vectors],
               "tasks": {}}
    for task in args.tasks:
        name = Path(task).stem if task != "aut" else "aut"
        prompts = task_prompts(task, args.n)
        print(f"[{name}] {len(prompts)} prompts x conditions ...", file=sys.stderr)
        config = ProjectionConfig(layer=args.layer, alpha=args.alpha, positions=args.positions,
                                  max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
        result = projection.run(model, config, vectors=vectors, prompts=prompts, merged=merged)
        folder = result.save(out / name)
        files = {"folder": str(folder)}
        for key, fig in projection_viz.figures(result).items():
            files[key] = str(save_figure(fig, folder / key))
        summary["tasks"][name] = {"n_prompts": result.n_prompts, "files": files,
                                  "projection": summarize(result, args.layer),
                                  "multi_role_prompt": result.settings["multi_role_prompt"]}
    path = out / "summary.json"
    atomic_write_json(path, summary)
    for name, t in summary["tasks"].items():
        rm = t["projection"]["response_mean"]
        print(f"\n[{name}] response-mean Δa · v/‖v‖, averaged over layers >= {args.layer}:")
        axes = list(next(iter(rm.values())))
        print("condition".ljust(28) + "".join(a[:18].rjust(20) for a in axes))
        for cond, row in rm.items():
            print(cond[:28].ljust(28) + "".join(f"{row[a]['mean_from_layer']:+20.3f}" for a in axes))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
