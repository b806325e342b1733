"""The Persona Vectors monitoring experiment, offline, on the embedded model (SmolLM2-135M).

For each trait: extract a persona vector the quick way the tests do (instruction pairs 0-1,
the first 10 extraction questions, greedy answers of <= 48 tokens; skipped when the vector
file exists), then run the graded monitor (the default 5 levels, strongly anti- to strongly
pro-trait, crossed with the eval questions), score the answers with the built-in lexicon judge
and report, per layer, Pearson r between the last-prompt-token projection and the trait score
with its 95 % CI. With ``--samples-per-prompt K`` (K > 1, sampled at ``--temperature``) each
prompt's trait score is the mean over K answers. Results (config.json, result.json, rows.csv,
figures) go to ``OUT/monitor_<trait>/`` (``OUT/monitor_<trait>_k<K>/`` for K > 1). The printed
line also gives r at ``--preregistered-layer`` (chosen before the run, so free of the
best-of-N-layers selection that inflates the best layer's r).

    OMP_NUM_THREADS=1 python analyses/monitor_graded.py --traits humorous,optimistic \\
        --layers 2-28:2 --n-questions 20 --max-new-tokens 48 --samples-per-prompt 4 --temperature 1.0
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import persona_lens
from persona_lens.analysis import monitor
from persona_lens.extraction import extract
from persona_lens.judges import make_judge
from persona_lens.personas import load_persona
from persona_lens.vectors import PersonaVector
from persona_lens.viz import monitor as monitor_viz
from persona_lens.viz import save_figure


def parse_layers(text: str) -> tuple[int, ...]:
    """``"4-28:2"`` -> 4, 6, ..., 28; ``"8,12,16"`` -> those."""
    if "-" in text:
        span, _, step = text.partition(":")
        lo, hi = (int(x) for x in span.split("-"))
        return tuple(range(lo, hi + 1, int(step or 1)))
    return tuple(int(x) for x in text.split(","))


def vector_for(model, trait: str, folder: Path) -> PersonaVector:
    path = folder / f"{trait}.safetensors"
    if path.exists():
        return PersonaVector.load(path)
    spec = load_persona(trait)
    sub = dataclasses.replace(spec, instruction=list(spec.instruction[:2]), questions=spec.questions[:10])
    vector, _ = extract(model, sub, path, max_new_tokens=48, batch_size=20, progress=False)
    return vector


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--traits", default="humorous,impolite")
    parser.add_argument("--layers", default="4-28:2")
    parser.add_argument("--n-questions", type=int, default=20)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=25, help="prompts per generate (each with K rows)")
    parser.add_argument("--samples-per-prompt", type=int, default=1, help="K sampled answers per prompt")
    parser.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (needed for K > 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preregistered-layer", type=int, default=20)
    parser.add_argument("--levels", default=None, help="levels JSON file (default: the 5 built-in levels)")
    parser.add_argument("--vectors", default="/tmp/results/vectors", help="vector folder (extracted when missing)")
    parser.add_argument("--out", default="/tmp/results")
    parser.add_argument("--rescore", action="store_true",
                        help="re-judge the saved answers of OUT/monitor_<trait> with the current lexicon "
                             "(nothing is generated or captured)")
    args = parser.parse_args()
    suffix = f"_k{args.samples_per_prompt}" if args.samples_per_prompt > 1 else ""
    if args.rescore:
        for trait in args.traits.split(","):
            folder = Path(args.out) / f"monitor_{trait}{suffix}"
            result = monitor.rescore(monitor.GradedMonitorResult.load(folder), make_judge(f"lexicon:{trait}"),
                                     load_persona(trait))
            report(result, result.save(folder), {}, args.preregistered_layer)
        return
    model = persona_lens.load_model()
    levels = monitor.load_levels(args.levels) if args.levels else monitor.DEFAULT_LEVELS
    Path(args.vectors).mkdir(parents=True, exist_ok=True)
    for trait in args.traits.split(","):
        start = time.time()
        vector = vector_for(model, trait, Path(args.vectors))
        extracted = time.time()
        config = monitor.GradedMonitorConfig(persona=trait, layers=parse_layers(args.layers), levels=levels,
                                             n_questions=args.n_questions, max_new_tokens=args.max_new_tokens,
                                             batch_size=args.batch_size, samples_per_prompt=args.samples_per_prompt,
                                             temperature=args.temperature, seed=args.seed)
        result = monitor.run(model, config, vector=vector, judge=make_judge(f"lexicon:{trait}"),
                             spec=load_persona(trait), progress=False)
        report(result, result.save(Path(args.out) / f"monitor_{trait}{suffix}"),
               {"extract_s": round(extracted - start, 1), "monitor_s": round(time.time() - extracted, 1)},
               args.preregistered_layer)


def report(result, folder: Path, timing: dict, preregistered_layer: int) -> None:
    """Figures beside the result, and one JSON line: r at the best and the pre-registered layer
    with their CIs, level means."""
    for name, fig in monitor_viz.figures(result).items():
        save_figure(fig, folder / name)
    best = result.best or {}
    pre = next((c for c in result.per_layer if c["layer"] == preregistered_layer), {})
    summary = {"trait": result.persona, "judge": result.judge, "n": result.n, "best_layer": result.best_layer,
               "r": best.get("r"), "ci": [best.get("ci_low"), best.get("ci_high")],
               "preregistered_layer": preregistered_layer, "r_pre": pre.get("r"),
               "ci_pre": [pre.get("ci_low"), pre.get("ci_high")],
               "levels": [(lv["name"], lv["mean_trait_score"]) for lv in result.levels], **timing, "out": str(folder)}
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
