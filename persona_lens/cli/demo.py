"""Commands ``sweep`` (layer x steering-strength sweep) and ``demo`` (the end-to-end offline demo)."""

from __future__ import annotations

import json

import click

from ..analysis import sweep as sweep_analysis
from ..analysis.sweep import DEFAULT_ALPHAS, SweepConfig
from ..demo import run_demo, set_threads
from ..interop import load_vector
from ..personas import load_persona
from ..viz import sweep as sweep_viz
from .options import (
    INPUT_FILE,
    Backend,
    NumberList,
    OutputPath,
    backend_options,
    engine_option,
    judge_options,
    max_new_tokens_option,
)

THREADS_HELP = "torch CPU threads: a number, 'default' (torch's) or 'auto' (1 when the machine is oversubscribed)"


def _threads(ctx, param, value: str) -> str:
    if value not in ("auto", "default") and not (value.isdigit() and int(value) >= 1):
        raise click.BadParameter(f"{value!r}: expected a number >= 1, 'default' or 'auto'")
    return value


@click.command("sweep", short_help="which layer and alpha: norms, held-out AUROC/Cohen's d, steering effect")
@click.option("--vector", type=INPUT_FILE, required=True, help="persona vector (.safetensors)")
@click.option("--persona", required=True, help="the vector's persona spec: built-in name or JSON path")
@click.option("--out", type=OutputPath(directory=True), required=True,
              help="output folder (tables, figures, cached generations)")
@click.option("--layers", type=NumberList(int, minimum=0), default=None, show_default="about 6 spread over the model",
              help="layers to steer at, comma separated, e.g. 4,8,12")
@click.option("--alphas", type=NumberList(float), default=",".join(str(a) for a in DEFAULT_ALPHAS),
              help="steering strengths, comma separated (a leading minus is fine: --alphas -0.25,0,0.1)")
@click.option("--alpha-mode", type=click.Choice(["fraction", "raw"]), default="fraction",
              help="fraction: alpha*||v|| is that fraction of ||h||; raw: the coefficient itself")
@click.option("--n-eval", type=click.IntRange(min=1), default=8, help="held-out questions (x pos/neg prompts)")
@click.option("--n-steer", type=click.IntRange(min=1), default=4, help="steering prompts (the first held-out questions)")
@click.option("--readout-layer", type=click.IntRange(min=0), default=None,
              show_default="largest held-out Cohen's d", help="layer where generated texts are measured")
@click.option("--threads", default="auto", callback=_threads, help=THREADS_HELP)
@judge_options(default="none")
@max_new_tokens_option(48)
@backend_options(batch_size=16, engine=True)
def sweep(vector, persona, out, layers, alphas, alpha_mode, n_eval, n_steer, readout_layer, threads, judge,
          max_new_tokens, backend) -> int:
    """Measure the vector at every layer and steer over layer x alpha; prints the summary and the
    recommended layer and alpha (use them with `persona-lens steer --layer L --alpha A`)."""
    v = load_vector(vector)
    spec = load_persona(persona)
    set_threads(threads)
    model = backend.load()
    config = SweepConfig(layers=None if layers is None else tuple(layers), alphas=tuple(alphas),
                         alpha_mode=alpha_mode, n_eval=n_eval, n_steer=n_steer, max_new_tokens=max_new_tokens,
                         batch_size=backend.batch_size, readout_layer=readout_layer)
    res = sweep_analysis.run(model, config, vector=v, spec=spec, judge=judge.build(model, backend.model),
                             resume_dir=out, backend=backend.generator(model))
    res.save(out)
    sweep_viz.save_figures(res, out)
    click.echo(res.summary_text())
    click.echo(json.dumps(res.recommendation, indent=2))
    return 0


@click.command("demo", short_help="the end-to-end offline demo: extract, blend, sweep, BILLY, monitor, screen, report")
@click.option("--out", type=OutputPath(directory=True), required=True,
              help="output folder (reruns reuse its cached stages)")
@click.option("--quick", is_flag=True, help="small settings (about 2-4 minutes on 2 CPU cores)")
@click.option("--model", default="default", help="model name (default: the embedded SmolLM2-135M-Instruct)")
@judge_options(default="embedding", help="trait judge: embedding (offline proxy) | none | openai:MODEL | local:MODEL")
@click.option("--threads", default="auto", callback=_threads, help=THREADS_HELP)
@click.option("--force", is_flag=True, help="rerun every stage even when cached")
@click.option("--no-progress", is_flag=True, help="no progress bars (stage lines still print)")
@engine_option()
def demo(out, quick, model, judge, threads, force, no_progress, engine) -> int:
    """Run (or resume) the whole pipeline on the embedded model, offline, into --out with report.html."""
    Backend(model, None, None).check()
    summary = run_demo(out, quick=quick, model=model, judge=judge.spec, judge_base_url=judge.base_url,
                       judge_api_key_env=judge.api_key_env, threads=threads, force=force, progress=not no_progress,
                       backend=engine)
    for lines in summary["summary"].values():
        for line in lines:
            click.echo(f"- {line}")
    click.echo(f"report: {summary['out']}/report.html  ({summary['total_seconds']:.0f}s; "
               f"{len(summary['ran'])} stage(s) ran, {len(summary['skipped'])} cached)")
    return 0
