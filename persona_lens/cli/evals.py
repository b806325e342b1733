"""``persona-lens eval creativity``: BILLY's creativity evaluation (see persona_lens.evals.creativity)."""

from __future__ import annotations

import json
import logging
from dataclasses import fields
from pathlib import Path
from typing import Any

import click

from ..evals import creativity as creativity_eval
from ..evals.creativity import CreativityConfig, parse_ablation, read_sweep
from ..personas.billy import PAPER_MERGE
from ..viz import creativity as creativity_viz
from .options import (
    INPUT_DIR,
    INPUT_FILE,
    FiniteFloat,
    NameList,
    NumberList,
    OutputPath,
    backend_options,
    judge_options,
    max_new_tokens_option,
    positions_option,
)


def _default(name: str) -> str:
    """The library's default of a list field of CreativityConfig, as a comma list."""
    default: Any = next(f.default for f in fields(CreativityConfig) if f.name == name)
    return ",".join(str(x) for x in default)



def _ablation(ctx, param, value: str | None) -> list[int] | None:
    try:
        return parse_ablation(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.group("eval", short_help="evaluations (creativity: BILLY vs single agent, multi-role, LLM discussion)")
def eval_group() -> None:
    """Evaluations."""


@eval_group.command("creativity", short_help="AUT / Instances / Similarities / Scientific: sa, sa_t1, mrp, "
                                             "discussion, billy")
@click.option("--out", type=OutputPath(directory=True), required=True, help="output folder (rerun to resume)")
@click.option("--tasks", type=NameList(), default=_default("tasks"), help="comma list of aut,instances,similarities,scientific")
@click.option("--methods", type=NameList(), default=_default("methods"), help="comma list of sa,sa_t1,mrp,discussion,billy,single:NAME")
@click.option("--n", type=click.IntRange(min=1), default=10, help="items per task (the first n)")
@click.option("--seeds", type=NumberList(int), default=_default("seeds"), help="sampling seeds, comma separated (one response per "
                                                                  "item and seed)")
@click.option("--tasks-dir", type=INPUT_DIR, default=None, show_default="the built-in task set",
              help="an LLM-Discussion Datasets folder (AUT/, Instances/, ...)")
@click.option("--split", default="auto", help="file suffix under --tasks-dir (10, 30_test, 100...); auto = the first "
                                              "with >= n items")
@max_new_tokens_option(256, help="the same for every call of every method")
@click.option("--temperature", type=click.FloatRange(min=0.0), default=0.7,
              help="sampling temperature (sa_t1 always uses 1.0)")
@click.option("--layer", type=click.IntRange(min=0), default=None, show_default="from --sweep",
              help="BILLY steering layer (blocks.L.hook_resid_post)")
@click.option("--alpha", type=FiniteFloat(), default=None, show_default="from --sweep", help="BILLY steering coefficient")
@positions_option()
@click.option("--sweep", default=None, help="a layer sweep's result.json (or its folder): its recommended layer and alpha")
@click.option("--vectors", type=NameList(), default=None,
              help="persona vector files or built-in persona names to blend (mean) into the merged vector, comma separated")
@click.option("--merged", type=INPUT_FILE, default=None, help="an already merged vector file")
@click.option("--vector-dir", type=INPUT_DIR, default=None,
              help="folder of NAME.safetensors vectors used for persona names (--personas, single:NAME, the ablation) "
                   "before extracting on the fly")
@click.option("--personas", type=NameList(), default=",".join(PAPER_MERGE),
              help="built-in personas to extract and blend when no --vectors/--merged")
@click.option("--extract-questions", type=click.IntRange(min=1), default=5,
              help="questions per persona for on-the-fly extraction")
@click.option("--extract-max-tokens", type=click.IntRange(min=1), default=96,
              help="tokens per response for on-the-fly extraction")
@click.option("--ablation-vectors", default=None, callback=_ablation,
              help="e.g. 1..7: also run billy_k{k} = the mean of the first k of the 7 built-in BILLY personas "
                   "(or of --vectors)")
@click.option("--roles", type=NameList(), default=_default("roles"), help="discussion roles")
@click.option("--rounds", type=click.IntRange(min=1), default=3, help="discussion rounds")
@click.option("--discussion-final", type=click.Choice(["agents", "merged", "first"]), default="agents",
              help="agents: score each agent's final list and average (LLM-Discussion); merged: unique ideas of all "
                   "final lists; first: the first agent's")
@judge_options(default="embedding", help="none | embedding (offline proxies) | openai:MODEL | local:MODEL")
@click.option("--judge-samples", type=click.IntRange(min=1), default=3, help="judge samples per score")
@click.option("--judge-temperature", type=click.FloatRange(min=0.0), default=None,
              show_default="1.0 with several samples, else 0", help="judge sampling temperature")
@click.option("--judge-mode", type=click.Choice(["batch", "per_idea"]), default="batch",
              help="batch: one request per list and criterion; per_idea: one request per idea")
@click.option("--no-figures", is_flag=True, help="write no figures")
@click.option("--quiet", is_flag=True, help="no progress output")
@backend_options(batch_size=8, batch_help="items per batched generation (1 = unbatched latency)", engine=True)
def creativity(out, tasks, methods, n, seeds, tasks_dir, split, max_new_tokens, temperature, layer, alpha, positions,
               sweep, vectors, merged, vector_dir, personas, extract_questions, extract_max_tokens, ablation_vectors,
               roles, rounds, discussion_final, judge, judge_samples, judge_temperature, judge_mode, no_figures, quiet,
               backend) -> int:
    """Run the creativity methods on the task items, score them and write responses.jsonl,
    scores.jsonl, results.{csv,md}, figures/, config.json and result.json into --out (resumable)."""
    if sweep is not None:
        read_sweep(sweep)  # its recommendation is readable, before any model loads
    if not quiet:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = CreativityConfig(
        tasks=tasks, methods=methods, n=n, seeds=seeds, max_new_tokens=max_new_tokens, temperature=temperature,
        batch_size=backend.batch_size, tasks_dir=str(tasks_dir) if tasks_dir else None, split=split, layer=layer,
        alpha=alpha, positions=positions, sweep=sweep, vectors=vectors, merged=str(merged) if merged else None,
        vector_dir=str(vector_dir) if vector_dir else None, personas=personas, extract_questions=extract_questions,
        extract_max_tokens=extract_max_tokens, roles=roles, rounds=rounds, discussion_final=discussion_final,
        judge=judge.spec, judge_samples=judge_samples, judge_temperature=judge_temperature, judge_mode=judge_mode,
        judge_base_url=judge.base_url, judge_api_key_env=judge.api_key_env, ablation_vectors=ablation_vectors,
    )
    model = backend.load()
    result = creativity_eval.run(model, cfg, out=out, progress=not quiet, backend=backend.generator(model))
    result.save(out)
    if not no_figures:
        creativity_viz.save_figures(result, Path(out) / "figures")
    click.echo(result.markdown())
    click.echo(json.dumps({"out": str(out), "ratios_billy_over_discussion": result.ratios,
                           "steering": result.steering, "wall_s": round(result.wall_s, 1)}))
    return 0
