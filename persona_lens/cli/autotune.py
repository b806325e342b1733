"""Command ``autotune``: the Pareto front of trait effect, coherence and answer diversity over
layer x alpha x positions (x blend weights) under a judge-call budget."""

from __future__ import annotations

import json

import click

from ..analysis import autotune as autotune_analysis
from ..analysis.autotune import AutotuneConfig
from ..dose import read_card, set_recommendation
from ..interop import load_vector
from ..personas import load_persona
from ..viz import autotune as autotune_viz
from .options import (
    INPUT_FILE,
    POSITIONS,
    NameList,
    NumberList,
    OutputPath,
    backend_options,
    judge_options,
    max_new_tokens_option,
)

_DEFAULTS = AutotuneConfig()


def _positions(ctx, param, value: list[str]) -> tuple[str, ...]:
    bad = [p for p in value if p not in POSITIONS]
    if bad:
        raise click.BadParameter(f"{bad}: each position policy must be one of {', '.join(POSITIONS)}")
    return tuple(dict.fromkeys(value))


@click.command("autotune", short_help="Pareto search of layer x alpha (x positions, x blend weights) under a "
                                      "judge-call budget")
@click.option("--vector", "vectors", type=INPUT_FILE, multiple=True, required=True,
              help="persona vector file; repeat it to tune a blend of several vectors")
@click.option("--weights", type=NumberList(float), multiple=True,
              help="one blend-weight candidate (one weight per --vector, comma separated); repeat for more "
                   "candidates  [default: equal weights]")
@click.option("--blend-method", type=click.Choice(["weighted", "normalized", "orthogonal"]),
              default=_DEFAULTS.blend_method, help="how the --weights combine several vectors (persona-lens blend)")
@click.option("--persona", required=True, help="persona spec (built-in name or JSON path): the judge's eval prompt "
                                               "and the questions")
@click.option("--out", type=OutputPath(directory=True), required=True, help="output folder (tables, figures, answers)")
@click.option("--layers", type=NumberList(int, minimum=0), default=None, show_default="about 6 spread over the model",
              help="layers to steer at, comma separated")
@click.option("--alphas", type=NumberList(float), default=",".join(f"{a:g}" for a in _DEFAULTS.alphas),
              help="steering strengths, comma separated (0 is the baseline and is dropped)")
@click.option("--alpha-mode", type=click.Choice(["fraction", "raw"]), default="fraction",
              help="fraction: alpha*||v|| is that fraction of the residual norm ||h||; raw: the coefficient itself")
@click.option("--positions", type=NameList(), default="response", callback=_positions,
              help=f"position policies to search, comma separated ({', '.join(POSITIONS)})")
@click.option("--budget", type=click.IntRange(min=1), default=_DEFAULTS.budget,
              help="maximum judge calls (one trait or coherence score of one answer)")
@click.option("--eta", type=click.IntRange(min=2), default=_DEFAULTS.eta, help="keep about 1/eta per rung")
@click.option("--final-size", type=click.IntRange(min=1), default=_DEFAULTS.final_size,
              help="candidates kept at the last rung")
@click.option("--n-rungs", type=click.IntRange(min=1), default=None, show_default="until --final-size",
              help="number of rungs")
@click.option("--n-questions", type=click.IntRange(min=1), default=_DEFAULTS.n_questions,
              help="question pool: the persona's first N eval questions")
@click.option("--min-questions", type=click.IntRange(min=1), default=_DEFAULTS.min_questions,
              help="questions per candidate at rung 0, at least")
@click.option("--seed", type=int, default=0, help="question order and bootstrap seed (the global RNG is untouched)")
@click.option("--n-boot", type=click.IntRange(min=0), default=_DEFAULTS.n_boot, help="bootstrap resamples for CIs")
@click.option("--no-judge-coherence", is_flag=True,
              help="score coherence with the text proxy even when the judge can score it (halves the calls)")
@click.option("--write-card", type=INPUT_FILE, default=None,
              help="write the best point as the recommendation of this vector file's dose card (the card must "
                   "exist: persona-lens calibrate)")
@click.option("--no-progress", is_flag=True, help="no progress bars")
@judge_options(default="embedding", help="trait judge: embedding (offline proxy) | openai:MODEL | local:MODEL | ...")
@max_new_tokens_option(_DEFAULTS.max_new_tokens)
@backend_options(batch_size=_DEFAULTS.batch_size, engine=True)
def autotune(vectors, weights, blend_method, persona, out, layers, alphas, alpha_mode, positions, budget, eta,
             final_size, n_rungs, n_questions, min_questions, seed, n_boot, no_judge_coherence, write_card,
             no_progress, judge, max_new_tokens, backend) -> int:
    """Successive halving over layer x alpha x positions (x --weights for several --vector) for the
    Pareto front of trait effect, coherence and answer diversity; writes autotune_candidates and
    autotune_evaluations (CSV/JSON), result.json, the judged answers and two figures to --out, and
    prints the best point (with --write-card, also into that vector's dose card)."""
    if judge.kind == "none":
        raise click.BadParameter("autotune needs a trait judge", param_hint="'--judge'")
    if weights and len(vectors) < 2:
        raise click.BadParameter("blend weights need two or more --vector", param_hint="'--weights'")
    for w in weights:
        if len(w) != len(vectors):
            raise click.BadParameter(f"{list(w)}: {len(w)} weight(s) for {len(vectors)} vector(s)",
                                     param_hint="'--weights'")
    if write_card is not None:
        read_card(write_card)  # NoDoseCardError now, before any model loads
    loaded = [load_vector(v) for v in vectors]
    spec = load_persona(persona)
    config = AutotuneConfig(layers=None if layers is None else tuple(layers), alphas=tuple(alphas),
                            alpha_mode=alpha_mode, positions=positions, weights=tuple(tuple(w) for w in weights),
                            blend_method=blend_method, n_questions=n_questions, budget=budget, eta=eta,
                            final_size=final_size, n_rungs=n_rungs, min_questions=min_questions, seed=seed,
                            n_boot=n_boot, judge_coherence=not no_judge_coherence, max_new_tokens=max_new_tokens,
                            batch_size=backend.batch_size or _DEFAULTS.batch_size)
    model = backend.load()
    result = autotune_analysis.run(model, config, vectors=loaded, spec=spec, judge=judge.build(model, backend.model),
                                   progress=not no_progress, backend=backend.generator(model))
    result.save(out)
    figures = autotune_viz.save_figures(result, out)
    click.echo(result.summary_text())
    recommendation = result.recommendation()
    click.echo(json.dumps({"out": str(out), "figures": figures, "judge_calls": result.judge_calls,
                           "recommendation": recommendation}, indent=2))
    if write_card is not None:
        if recommendation is None:
            raise click.ClickException(f"no best point (nothing clears the floors): the dose card of {write_card} "
                                       f"is unchanged; the search is saved in {out}")
        set_recommendation(write_card, recommendation)
        click.echo(f"recommendation written to the dose card of {write_card}")
    return 0
