"""The ``monitor`` command: last-prompt-token projection vs trait expression, and with
``--graded`` the Persona Vectors monitoring experiment (:mod:`persona_lens.analysis.monitor`)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..analysis import monitor as monitor_analysis
from ..analysis.projection import row_prompt
from ..interop import load_vector
from ..personas import load_persona
from ..viz import monitor as monitor_viz
from ..viz import save_figure
from .analysis import VECTOR_HELP
from .inputs import check_jsonl
from .options import INPUT_FILE, backend_options, judge_options, max_new_tokens_option, output_problem


def _scoring_options(f):
    """The vector, layer, output and chunking options of monitor."""
    for option in reversed([
        click.option("--vector", type=INPUT_FILE, required=True, help=VECTOR_HELP),
        click.option("--layer", type=click.IntRange(min=0), default=None,
                     help="layer whose residual stream is projected (blocks.L.hook_resid_post); "
                          "required unless --graded"),
        click.option("--chunk-size", type=click.IntRange(min=1), default=256, help="rows read and written per chunk"),
    ]):
        f = option(f)
    return f


def _layer_list(ctx, param, value: str | None) -> list[int] | None:
    """``--layers``: ``8,12,16``, a range ``10-20`` or a stepped range ``4-28:2``."""
    if value is None:
        return None
    out: list[int] = []
    try:
        for part in [p.strip() for p in value.split(",") if p.strip()]:
            span, _, step = part.partition(":")
            lo, sep, hi = span.partition("-")
            if sep:
                if int(step or 1) < 1 or int(hi) < int(lo):
                    raise ValueError
                out.extend(range(int(lo), int(hi) + 1, int(step or 1)))
            elif step:
                raise ValueError
            else:
                out.append(int(lo))
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected layers like 8,12,16 or 10-20 or 4-28:2") from None
    if not out or min(out) < 0:
        raise click.BadParameter(f"{value!r}: expected non-negative layers")
    return sorted(set(out))


@click.command("monitor", short_help="projection of each prompt's last token (before generating) vs trait expression")
@click.argument("prompts", type=INPUT_FILE, required=False)
@_scoring_options
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="output JSONL: the input rows + 'score' (the summary, its config and the scatter plot go to "
                   "the folder <out without .jsonl>.monitor/); with --graded: an output FOLDER (config.json, "
                   "result.json, rows.csv, scatter and r_by_layer figures)")
@judge_options(default="none", help="also generate, judge trait expression and report Pearson r: "
                                    "none | openai:MODEL | local:MODEL | embedding | lexicon:NAME|FILE.json")
@click.option("--persona", default=None, show_default="the vector's persona",
              help="persona name or spec file whose eval prompt the judge reads (and, with --graded, whose eval "
                   "questions and instructions make the prompts)")
@click.option("--graded", is_flag=True,
              help="the Persona Vectors monitoring experiment: the persona's eval questions under system prompts "
                   "graded from strongly anti- to strongly pro-trait; Pearson r (95 % CI) per layer")
@click.option("--levels", "levels_file", type=INPUT_FILE, default=None, show_default="5 levels from the persona's "
              "pos/neg instructions", help="with --graded: JSON list of {name, strength, system}; system may hold "
              "{pos}/{neg}")
@click.option("--layers", default=None, callback=_layer_list,
              help="with --graded: layers read in the same pass, e.g. 10-20, 4-28:2 or 8,12,16")
@click.option("--n-questions", type=click.IntRange(min=1), default=None, show_default="all eval questions",
              help="with --graded: the first N eval questions")
@click.option("--temperature", type=click.FloatRange(min=0.0), default=0.0,
              help="with --graded: sampling temperature; 0 = greedy")
@click.option("--seed", type=int, default=0, help="with --graded: sampling seed (the global RNG is left untouched)")
@click.option("--samples-per-prompt", type=click.IntRange(min=1), default=1,
              help="with --graded: K answers sampled per prompt (needs --temperature > 0); a prompt's trait "
                   "score is the mean of its K answers' scores; a generate call holds --batch-size prompts x K rows")
@max_new_tokens_option(128, help="response length when --judge generates answers")
@backend_options(batch_size=8, engine=True)
def monitor(prompts, vector, layer, chunk_size, out, judge, persona, graded, levels_file, layers, n_questions,
            temperature, seed, samples_per_prompt, max_new_tokens, backend) -> int:
    """Score every row of PROMPTS (JSONL; each row 'messages' or 'prompt' with an optional
    'system') by the projection of its last prompt token onto the vector at --layer.

    With --graded (no PROMPTS): the paper's monitoring experiment. Each eval question of
    --persona is asked under graded system prompts; the last prompt token is projected at every
    --layers layer, the answer is generated and judged, and Pearson r (projection vs trait
    score) with its 95 % CI is reported per layer. --samples-per-prompt K samples K answers
    per prompt and scores the prompt by their mean (less noise than one answer), e.g.

    \b
      persona-lens monitor --graded --vector h.safetensors --persona humorous
        --layers 4-28:2 --judge lexicon:humorous --out runs/monitor_humorous
        --samples-per-prompt 4 --temperature 1"""
    if graded:
        return _monitor_graded(prompts, vector, layer, out, judge, persona, levels_file, layers, n_questions,
                               temperature, seed, samples_per_prompt, max_new_tokens, backend)
    if prompts is None or layer is None:
        raise click.UsageError("give PROMPTS and --layer (or --graded for the graded experiment)")
    if levels_file or layers or n_questions or samples_per_prompt != 1:
        raise click.UsageError("--levels, --layers, --n-questions and --samples-per-prompt go with --graded")
    problem = output_problem(Path(out).expanduser(), directory=False)
    if problem:
        raise click.BadParameter(problem, param_hint="'--out'")
    check_jsonl(prompts, row_prompt)
    v = load_vector(vector)
    spec = load_persona(persona or v.name) if judge.kind != "none" else None
    _check_lexicon_trait(judge, spec)
    model = backend.load()
    config = monitor_analysis.MonitorConfig(prompts=str(prompts), out=str(out), layer=layer,
                                            max_new_tokens=max_new_tokens, chunk_size=chunk_size,
                                            batch_size=backend.batch_size)
    result = monitor_analysis.run(model, config, vector=v, judge=judge.build(model, backend.model), spec=spec,
                                  backend=backend.generator(model))
    folder = result.save(Path(out).with_suffix(".monitor"))
    for name, fig in monitor_viz.figures(result).items():
        save_figure(fig, folder / name)
    summary = {key: value for key, value in result.to_dict().items() if key != "scatter"}
    click.echo(json.dumps({**summary, "out": str(out), "result": str(folder)}, indent=2))
    return 0


def _check_lexicon_trait(judge, spec) -> None:
    """A lexicon judge scores one trait: refuse another persona before the model loads."""
    if spec is not None and judge.kind == "lexicon":
        trait = judge.build().trait
        if trait != spec.name:
            raise click.BadParameter(f"{judge.spec} scores {trait!r}, not the persona {spec.name!r}",
                                     param_hint="'--judge'")


def _monitor_graded(prompts, vector, layer, out, judge, persona, levels_file, layers, n_questions, temperature, seed,
                    samples_per_prompt, max_new_tokens, backend) -> int:
    """``monitor --graded``: checks everything before the model loads, runs, writes the folder."""
    if prompts is not None:
        raise click.UsageError("--graded makes its own prompts; give no PROMPTS file")
    if judge.kind == "none":
        raise click.UsageError("--graded needs a trait judge, e.g. --judge lexicon:humorous")
    layers = layers or ([layer] if layer is not None else None)
    if not layers:
        raise click.UsageError("--graded needs --layers (or --layer)")
    if samples_per_prompt > 1 and not temperature > 0:
        raise click.BadParameter(f"{samples_per_prompt} answers per prompt need sampling: give --temperature > 0 "
                                 "(greedy answers of one prompt are all the same)", param_hint="'--samples-per-prompt'")
    out = Path(out).expanduser()
    problem = output_problem(out, directory=True)
    if problem:
        raise click.BadParameter(problem, param_hint="'--out'")
    levels = monitor_analysis.load_levels(levels_file) if levels_file else monitor_analysis.DEFAULT_LEVELS
    v = load_vector(vector)
    spec = load_persona(persona or v.name)
    _check_lexicon_trait(judge, spec)
    too_deep = [at for at in layers if at >= v.n_layers]
    if too_deep:
        raise click.BadParameter(f"the vector has {v.n_layers} layers; no layer {too_deep}", param_hint="'--layers'")
    model = backend.load()
    config = monitor_analysis.GradedMonitorConfig(persona=str(persona or v.name), layers=tuple(layers), levels=levels,
                                                  n_questions=n_questions, max_new_tokens=max_new_tokens,
                                                  temperature=temperature, seed=seed, batch_size=backend.batch_size,
                                                  samples_per_prompt=samples_per_prompt)
    result = monitor_analysis.run(model, config, vector=v, judge=judge.build(model, backend.model), spec=spec,
                                  backend=backend.generator(model))
    folder = result.save(out)
    figures = {name: str(save_figure(fig, folder / name)) for name, fig in monitor_viz.figures(result).items()}
    click.echo(f"graded monitoring of {result.persona}: {result.n} prompts x {samples_per_prompt} answer(s), "
               f"judge {result.judge}")
    for c in result.per_layer:
        r = "n/a" if c["r"] is None else f"{c['r']:+.3f}"
        ci = "" if c["ci_low"] is None else f"  [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}]"
        click.echo(f"  layer {c['layer']:>3}: r = {r}{ci}  n = {c['n']}{'  <- best' if c['layer'] == result.best_layer else ''}")
    for lv in result.levels:
        mean = "n/a" if lv["mean_trait_score"] is None else f"{lv['mean_trait_score']:.1f}"
        click.echo(f"  level {lv['name']!r} (strength {lv['strength']:+g}): mean trait score {mean}")
    click.echo(json.dumps({"out": str(folder), "best_layer": result.best_layer, "best": result.best,
                           "rows": str(folder / monitor_analysis.ROWS_FILE), "figures": figures}, indent=2))
    return 0
