#!/usr/bin/env python
"""Layer sweep for a persona vector: which layer and steering strength to use.

Extracts the vector first when ``--vector`` does not exist (on a subset of the spec, see
``--n-pairs``/``--n-questions``), then runs :func:`persona_lens.analysis.sweep.run` and writes into ``--out``:

* ``config.json`` (the resolved :class:`~persona_lens.analysis.sweep.SweepConfig`) and ``result.json``
  (recommendation: layer, alpha, alpha range; both tables);
* ``sweep_layers.{csv,json}`` - per layer: vector_norm, resid_norm, norm_ratio, held-out
  auroc / cohens_d / gap (response mean), auroc_last_prompt;
* ``sweep_steering.{csv,json}`` - per swept layer x alpha: alpha (raw), alpha_frac
  (alpha*||v||/||h||), projection / delta_projection / effect of the generated text, trait
  score (with --judge), coherence, passes_guard;
* figures (HTML, numbers next to each): sweep_separation, sweep_norms, sweep_effect,
  sweep_coherence (+ sweep_trait with a judge); generations and held-out answers (JSONL; the
  unscored ``heldout.jsonl``/``generations.jsonl`` make a rerun resume).

Example (offline, embedded model)::

    python analyses/layer_sweep.py --persona creative_professional \\
        --vector runs/cp.safetensors --out runs/sweep_cp --layers 5,10,15,20,25 --judge embedding
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from persona_lens.analysis import sweep
from persona_lens.analysis.sweep import DEFAULT_ALPHAS, SweepConfig
from persona_lens.extraction import extract
from persona_lens.judges import make_judge
from persona_lens.models import load_model
from persona_lens.personas import load_persona
from persona_lens.vectors import PersonaVector
from persona_lens.viz import sweep as sweep_viz


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--persona", required=True, help="built-in persona name or spec JSON")
    p.add_argument("--vector", required=True, help="vector file; extracted first if missing")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--model", default="default")
    p.add_argument("--layers", type=_ints, default=None, help="layers to steer at (default: ~6 spread over the depth)")
    p.add_argument("--alphas", type=_floats, default=list(DEFAULT_ALPHAS),
                   help="comma separated; write --alphas=-0.25,0,0.1 (with =) when the list starts with a minus")
    p.add_argument("--alpha-mode", default="fraction", choices=["fraction", "raw"])
    p.add_argument("--n-eval", type=int, default=8)
    p.add_argument("--n-steer", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--readout-layer", type=int, default=None)
    p.add_argument("--judge", default="none", help="none | embedding | openai:MODEL | local:MODEL")
    p.add_argument("--n-pairs", type=int, default=None, help="extraction only: instruction pairs to use")
    p.add_argument("--n-questions", type=int, default=None, help="extraction only: questions to use")
    p.add_argument("--extract-tokens", type=int, default=64, help="extraction only: max new tokens")
    args = p.parse_args(argv)

    spec = load_persona(args.persona)
    model = load_model(args.model)
    vec_path = Path(args.vector)
    if vec_path.exists():
        vector = PersonaVector.load(vec_path)
    else:
        small = dataclasses.replace(spec, instruction=list(spec.instruction[: args.n_pairs or len(spec.instruction)]),
                                    questions=list(spec.questions[: args.n_questions or len(spec.questions)]))
        print(f"extracting {spec.name} into {vec_path} ...", file=sys.stderr)
        vector, _ = extract(model, small, vec_path, max_new_tokens=args.extract_tokens, batch_size=args.batch_size)
    judge = make_judge(args.judge) if args.judge != "none" else None
    t = time.perf_counter()
    config = SweepConfig(layers=None if args.layers is None else tuple(args.layers), alphas=tuple(args.alphas),
                         alpha_mode=args.alpha_mode, n_eval=args.n_eval, n_steer=args.n_steer,
                         max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                         readout_layer=args.readout_layer)
    res = sweep.run(model, config, vector=vector, spec=spec, judge=judge, resume_dir=args.out)
    res.save(args.out)
    sweep_viz.save_figures(res, args.out)
    print(res.summary_text())
    print(json.dumps(res.recommendation, indent=2))
    print(f"wrote {args.out} in {time.perf_counter() - t:.0f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
