"""End-to-end latency per query: BILLY (one steered call) vs LLM discussion (N agents x R rounds).

Both answer the same creativity items with the same model and the same ``max_new_tokens`` per
call, one query at a time (batch size 1: per-query latency, as an interactive user sees it).
The discussion's calls run one after another as LLM-Discussion's API calls do; ``--parallel-agents``
batches the agents of a round instead. The merged BILLY vector is read from ``--merged``/``--vectors``
or extracted once from the built-in personas (cached under ``--cache``). Prints a human line and a
JSON line::

    python benchmarks/billy_vs_discussion.py [--model default] [--n 2] [--max-new-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default")
    p.add_argument("--device", default=None)
    p.add_argument("--task", default="aut", help="aut, instances, similarities or scientific (built-in items)")
    p.add_argument("--tasks-dir", default=None, help="an LLM-Discussion Datasets folder instead of the built-in items")
    p.add_argument("--n", type=int, default=2, help="queries (items) to time")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--roles", default="environmentalist,creative_professional,futurist,futurist")
    p.add_argument("--parallel-agents", action="store_true", help="batch the agents of a round (one call per round)")
    p.add_argument("--layer", type=int, default=None)
    p.add_argument("--alpha", type=float, default=None)
    p.add_argument("--merged", default=None)
    p.add_argument("--vectors", nargs="+", default=None)
    p.add_argument("--extract-questions", type=int, default=2)
    p.add_argument("--extract-max-tokens", type=int, default=48)
    p.add_argument("--cache", default="runs/bench_billy_vs_discussion", help="vector cache folder")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from persona_lens.evals.creativity import CreativityConfig, CreativityHarness
    from persona_lens.models import load_model, model_id

    roles = [r for r in args.roles.split(",") if r]
    model = load_model(args.model, device=args.device)
    cfg = CreativityConfig(tasks=[args.task], methods=["billy", "discussion"], n=args.n,
                           max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                           batch_size=1, tasks_dir=args.tasks_dir, layer=args.layer, alpha=args.alpha,
                           merged=args.merged, vectors=args.vectors, extract_questions=args.extract_questions,
                           extract_max_tokens=args.extract_max_tokens, roles=roles, rounds=args.rounds,
                           judge="none")
    h = CreativityHarness(model, cfg, out=args.cache, progress=False)
    items = h.items[h.cfg.tasks[0] if h.cfg.tasks[0] in h.items else next(iter(h.items))]
    billy = h.builder.build("billy")  # extracts/blends the vector before any timing
    discussion = h.builder.build("discussion")
    agent_batch = len(roles) if args.parallel_agents else 1

    billy.run(model, items[:1], seed=args.seed, max_new_tokens=8, batch_size=1)  # warm-up
    res = {"billy": [], "discussion": []}
    for i, item in enumerate(items):
        for name, method, bs in (("billy", billy, 1), ("discussion", discussion, agent_batch)):
            t0 = time.perf_counter()
            (out,) = method.run(model, [item], seed=args.seed + i, max_new_tokens=args.max_new_tokens, batch_size=bs)
            res[name].append({"wall_s": time.perf_counter() - t0, "calls": out.calls, "gen_tokens": out.gen_tokens,
                              "prompt_tokens": out.prompt_tokens})

    def agg(rows, key):
        return statistics.fmean(r[key] for r in rows)

    summary = {"benchmark": "billy_vs_discussion", "model": model_id(model), "task": args.task, "n_queries": len(items),
               "max_new_tokens": args.max_new_tokens, "agents": len(roles), "rounds": args.rounds,
               "parallel_agents": args.parallel_agents, "steering": h.steer_settings}
    for name in res:
        for key in ("wall_s", "calls", "gen_tokens", "prompt_tokens"):
            summary[f"{name}_{key}"] = agg(res[name], key)
    summary["latency_ratio_discussion_over_billy"] = summary["discussion_wall_s"] / summary["billy_wall_s"]
    summary["gen_tokens_ratio_discussion_over_billy"] = (summary["discussion_gen_tokens"]
                                                         / max(1e-9, summary["billy_gen_tokens"]))
    print(f"BILLY: {summary['billy_wall_s']:.2f} s/query ({summary['billy_calls']:.0f} call, "
          f"{summary['billy_gen_tokens']:.0f} generated tokens) | discussion: {summary['discussion_wall_s']:.2f} s/query "
          f"({summary['discussion_calls']:.0f} calls, {summary['discussion_gen_tokens']:.0f} generated tokens) | "
          f"discussion/BILLY latency x{summary['latency_ratio_discussion_over_billy']:.1f}, "
          f"tokens x{summary['gen_tokens_ratio_discussion_over_billy']:.1f}  [{summary['model']}, {len(items)} queries]")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
