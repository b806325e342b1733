"""``persona-lens eval creativity``: BILLY's creativity evaluation (see persona_lens.evals.creativity)."""

from __future__ import annotations

import argparse
import json


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluations (creativity: BILLY vs single agent, multi-role, LLM discussion)")
    evsub = p.add_subparsers(dest="eval_command", metavar="EVAL")
    c = evsub.add_parser(
        "creativity",
        help="AUT / Instances / Similarities / Scientific: sa, sa_t1, mrp, discussion, billy",
        description="Run the creativity methods on the task items, score them and write responses.jsonl, "
                    "scores.jsonl, results.{csv,md}, figures/ and summary.json into --out (resumable).",
    )
    c.add_argument("--out", required=True, help="output folder (rerun to resume)")
    c.add_argument("--tasks", type=_csv, default=["aut", "instances", "similarities", "scientific"],
                   help="comma list of aut,instances,similarities,scientific")
    c.add_argument("--methods", type=_csv, default=["sa", "sa_t1", "mrp", "discussion", "billy"],
                   help="comma list of sa,sa_t1,mrp,discussion,billy,single:NAME")
    c.add_argument("--n", type=int, default=10, help="items per task (first n)")
    c.add_argument("--seeds", type=int, nargs="+", default=[0], help="sampling seeds (one response per item and seed)")
    c.add_argument("--tasks-dir", default=None,
                   help="an LLM-Discussion Datasets folder (AUT/, Instances/, ...); default: the built-in task set")
    c.add_argument("--split", default="auto", help="file suffix under --tasks-dir (10, 30_test, 100...); auto = "
                                                   "the first with >= n items")
    c.add_argument("--model", default="default", help="embedded name (default, gemma-3-270m), HF id or local path")
    c.add_argument("--device", default=None)
    c.add_argument("--dtype", default=None, help="float32, bfloat16, float16")
    c.add_argument("--max-new-tokens", type=int, default=256, help="the same for every call of every method")
    c.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (sa_t1 always uses 1.0)")
    c.add_argument("--batch-size", type=int, default=8, help="items per batched generation (1 = unbatched latency)")
    g = c.add_argument_group("BILLY steering")
    g.add_argument("--layer", type=int, default=None, help="steering layer (blocks.L.hook_resid_post)")
    g.add_argument("--alpha", type=float, default=None, help="steering coefficient")
    g.add_argument("--positions", default="response", choices=["response", "prompt", "all"])
    g.add_argument("--sweep", default=None, help="a layer-sweep sweep.json (or its folder): its recommended layer/alpha")
    g.add_argument("--vectors", nargs="+", default=None,
                   help="persona vector files (or built-in persona names) to blend (mean) into the merged vector")
    g.add_argument("--merged", default=None, help="an already merged vector file")
    g.add_argument("--vector-dir", default=None,
                   help="folder of NAME.safetensors vectors used for persona names (--personas, single:NAME, the "
                        "ablation) before extracting on the fly")
    g.add_argument("--personas", type=_csv, default=None,
                   help="built-in personas to extract and blend when no --vectors/--merged "
                        "(default creative_professional,environmentalist,futurist,futurist)")
    g.add_argument("--extract-questions", type=int, default=5, help="questions per persona for on-the-fly extraction")
    g.add_argument("--extract-max-tokens", type=int, default=96, help="tokens per response for on-the-fly extraction")
    g.add_argument("--ablation-vectors", default=None,
                   help="e.g. 1..7: also run billy_k{k} = the mean of the first k of the 7 built-in BILLY "
                        "personas (or of --vectors)")
    d = c.add_argument_group("LLM discussion")
    d.add_argument("--roles", type=_csv, default=None,
                   help="discussion roles (default environmentalist,creative_professional,futurist,futurist)")
    d.add_argument("--rounds", type=int, default=3)
    d.add_argument("--discussion-final", default="agents", choices=["agents", "merged", "first"],
                   help="agents: score each agent's final list and average (LLM-Discussion); merged: unique ideas "
                        "of all final lists; first: the first agent's")
    j = c.add_argument_group("judging")
    j.add_argument("--judge", default="embedding",
                   help="none | embedding (offline proxies) | openai:MODEL (e.g. openai:gpt-4o-mini) | local:MODEL")
    j.add_argument("--judge-samples", type=int, default=3)
    j.add_argument("--judge-temperature", type=float, default=None, help="default 1.0 with several samples, else 0")
    j.add_argument("--judge-mode", default="batch", choices=["batch", "per_idea"],
                   help="batch: one request per list and criterion; per_idea: one request per idea")
    j.add_argument("--base-url", default=None, help="OpenAI-compatible endpoint (default $OPENAI_BASE_URL or OpenAI)")
    j.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    c.add_argument("--no-figures", action="store_true")
    c.add_argument("--quiet", action="store_true")
    c.set_defaults(func=cmd_creativity)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def cmd_creativity(args) -> int:
    import logging

    from ..evals.creativity.harness import CreativityConfig, run_creativity
    from ..evals.creativity.methods import DEFAULT_MERGE, DEFAULT_ROLES

    if not args.quiet:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = CreativityConfig(
        out=args.out, tasks=args.tasks, methods=args.methods, n=args.n, seeds=args.seeds, model=args.model,
        device=args.device, dtype=args.dtype, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
        batch_size=args.batch_size, tasks_dir=args.tasks_dir, split=args.split, layer=args.layer, alpha=args.alpha,
        positions=args.positions, sweep=args.sweep, vectors=args.vectors, merged=args.merged,
        vector_dir=args.vector_dir,
        personas=args.personas or list(DEFAULT_MERGE), extract_questions=args.extract_questions,
        extract_max_tokens=args.extract_max_tokens, roles=args.roles or list(DEFAULT_ROLES), rounds=args.rounds,
        discussion_final=args.discussion_final, judge=args.judge, judge_samples=args.judge_samples,
        judge_temperature=args.judge_temperature, judge_mode=args.judge_mode, judge_base_url=args.base_url,
        judge_api_key_env=args.api_key_env, ablation_vectors=args.ablation_vectors, figures=not args.no_figures,
        progress=not args.quiet,
    )
    summary = run_creativity(cfg)
    print((open(summary["files"]["results_md"], encoding="utf-8").read()))
    print(json.dumps({"out": args.out, "ratios_billy_over_discussion": summary["ratios_billy_over_discussion"],
                      "steering": summary["steering"], "wall_s": round(summary["wall_s"], 1)}))
    return 0
