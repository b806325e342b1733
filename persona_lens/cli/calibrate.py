"""Command ``calibrate``: measure a vector's dose-response curve and store its dose card."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from ..analysis import calibrate as calibrate_analysis
from ..analysis.calibrate import DEFAULT_DOSE_ALPHAS, CalibrateConfig
from ..demo import set_threads
from ..dose import write_card
from ..personas import load_persona
from ..vectors import PersonaVector
from ..viz import dose as dose_viz
from .options import (
    INPUT_FILE,
    NumberList,
    OutputPath,
    backend_options,
    judge_options,
    max_new_tokens_option,
    threads_option,
)


@click.command("calibrate", short_help="dose card: trait score and coherence vs alpha, stored in the vector file")
@click.argument("vector", type=INPUT_FILE)
@click.option("--persona", required=True, help="the vector's persona spec: built-in name or JSON path")
@click.option("--out", type=OutputPath(), required=True,
              help="vector file to write with the dose card (may be VECTOR itself)")
@click.option("--results", type=OutputPath(directory=True), default=None, show_default="<out>.calibrate/",
              help="folder for the tables, the figure and the cached generations (rerunning resumes)")
@click.option("--layers", type=NumberList(int, minimum=0), default=None, show_default="about 6 spread over the model",
              help="layers to measure, comma separated, e.g. 8,12,16")
@click.option("--alphas", type=NumberList(float), default=",".join(f"{a:g}" for a in DEFAULT_DOSE_ALPHAS),
              help="steering strengths, comma separated; negative values measure suppression")
@click.option("--alpha-mode", type=click.Choice(["fraction", "raw"]), default="fraction",
              help="fraction: alpha*||v|| is that fraction of ||h||; raw: the coefficient itself")
@click.option("--n-eval", type=click.IntRange(min=1), default=8,
              help="held-out questions (each answered unsteered, under the positive prompt and steered)")
@click.option("--coherence-min", type=click.FloatRange(0.0, 1.0), default=0.75,
              help="coherence breaks below this fraction of the unsteered answers' coherence")
@threads_option()
@judge_options(default="none", help="trait judge (required): embedding | lexicon:TRAIT | openai:MODEL | local:MODEL")
@max_new_tokens_option(48)
@backend_options(batch_size=16, engine=True)
def calibrate(vector, persona, out, results, layers, alphas, alpha_mode, n_eval, coherence_min, threads, judge,
              max_new_tokens, backend) -> int:
    """Measure, per layer and alpha, the judged trait score of steered answers (mean and 95%
    CI), their coherence, the residual norm and the alpha where coherence breaks down, plus the
    unsteered and positive-system-prompt scores; write VECTOR with that dose card to --out
    (`steer --strength S` then maps S through it) and the tables and dose_response.html to
    --results. Prints the summary and the card's per-layer ranges as JSON."""
    if judge.kind == "none":
        raise click.BadParameter("calibrate needs a trait judge, e.g. --judge embedding or --judge openai:MODEL",
                                 param_hint="'--judge'")
    v = PersonaVector.load(vector) if Path(vector).suffix == ".safetensors" else None
    if v is None:
        raise click.BadParameter(f"{vector}: the dose card is stored in a .safetensors vector file; convert it "
                                 "with `persona-lens import` first", param_hint="VECTOR")
    if out.suffix != ".safetensors":
        raise click.BadParameter(f"{out}: write a .safetensors file", param_hint="'--out'")
    spec = load_persona(persona)
    results = Path(results) if results is not None else out.with_name(out.stem + ".calibrate")
    set_threads(threads)
    started = time.perf_counter()
    model = backend.load()
    config = CalibrateConfig(persona=persona, judge=judge.spec, layers=None if layers is None else tuple(layers),
                             alphas=tuple(alphas), alpha_mode=alpha_mode, n_eval=n_eval,
                             max_new_tokens=max_new_tokens, batch_size=backend.batch_size, coherence_min=coherence_min)
    res = calibrate_analysis.run(model, config, vector=v, spec=spec, judge=judge.build(model, backend.model),
                                 resume_dir=results, backend=backend.generator(model))
    res.settings["wall_seconds"] = round(time.perf_counter() - started, 1)
    res.save(results)
    dose_viz.save_figures(res, results)
    write_card(vector, res.card(), out)
    click.echo(res.summary_text())
    click.echo(json.dumps({"out": str(out), "results": str(results), "best_layer": res.card_data["best_layer"],
                           "baseline": res.card_data["baseline"], "positive": res.card_data["positive"],
                           "layers": res.layer_summary, "wall_seconds": res.settings["wall_seconds"]}, indent=2))
    return 0
