"""Analysis commands: ``screen``, ``blend``, ``project``, ``shift`` (``monitor``: :mod:`.monitor`)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..analysis import projection as projection_analysis
from ..analysis import screen as screen_analysis
from ..analysis import shift as shift_analysis
from ..analysis.projection import row_prompt, task_prompts
from ..analysis.screen import training_row
from ..backends import make_backend
from ..blend import blend
from ..interop import load_vector
from ..personas import load_persona
from ..vectors import check_compatible
from ..viz import projection as projection_viz
from ..viz import save_figure
from ..viz import screen as screen_viz
from ..viz import shift as shift_viz
from .inputs import check_jsonl, check_prompt_file
from .options import (
    INPUT_FILE,
    FiniteFloat,
    NameList,
    NumberList,
    OutputPath,
    backend_options,
    input_files,
    max_new_tokens_option,
    output_problem,
    positions_option,
)

VECTOR_HELP = "persona vector file (.safetensors, .pt or .gguf)"


@click.command("screen", short_help="flag training rows by projection difference vs the base model's own answer")
@click.argument("data", type=INPUT_FILE)
@click.option("--vector", "vectors", type=INPUT_FILE, multiple=True, required=True,
              help=f"{VECTOR_HELP}; repeat for several traits (one capture pass screens them all)")
@click.option("--layer", type=click.IntRange(min=0), default=None,
              help="layer whose residual stream is projected (blocks.L.hook_resid_post)")
@click.option("--layers", type=NumberList(int, minimum=0), default=None,
              help="several layers, comma separated (e.g. 8,12,16): read in the same pass")
@click.option("--chunk-size", type=click.IntRange(min=1), default=256, help="rows read and written per chunk")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="one --vector and --layer: the output JSONL (rows + projection, base_projection, projection_diff; "
                   "the summary, top.jsonl and the histogram go to the folder <out without .jsonl>.screen/). "
                   "Several --vector or --layers: an output FOLDER (scores.csv, scored.jsonl, result.json, top.jsonl, "
                   "figures with their JSON/CSV)")
@click.option("--top", type=click.IntRange(min=1), default=20,
              help="print and write the K most flagged rows (per trait and layer)")
@click.option("--base-cache", type=OutputPath(), default=None,
              show_default="<out>.base_cache.jsonl, or <out>/base_cache.jsonl for a folder",
              help="base-response cache JSONL (resumable)")
@max_new_tokens_option(128, help="length of the base model's own responses")
@backend_options(batch_size=8, engine=True)
def screen(data, vectors, layer, layers, chunk_size, out, top, base_cache, max_new_tokens, backend) -> int:
    """Score every training row of DATA (JSONL; 'messages' ending with the assistant answer, or
    'prompt' + 'response') by the projection difference between its answer and the base
    model's own answer to the same prompt. With several --vector (and/or --layers) every trait
    is screened in one pass, and the report adds the mean ΔP per trait with its confidence
    interval and the cross-trait leakage matrix (correlation of per-row ΔP between traits)."""
    if (layer is None) == (layers is None):
        raise click.UsageError("give exactly one of --layer L or --layers L1,L2,...")
    multi = len(vectors) > 1 or layers is not None
    out = Path(out).expanduser()
    problem = output_problem(out, directory=multi)
    if problem:
        raise click.BadParameter(problem, param_hint="'--out'")
    check_jsonl(data, training_row)
    loaded = [load_vector(v) for v in vectors]
    check_compatible(loaded)  # same width, layers and model: before the model loads
    if multi:
        return _screen_traits(data, loaded, sorted(set(layers or [layer])), chunk_size, out, top, base_cache,
                              max_new_tokens, backend)
    model = backend.load()
    config = screen_analysis.ScreenConfig(data=str(data), out=str(out), layer=layer,
                                          base_cache=None if base_cache is None else str(base_cache), top_k=top,
                                          chunk_size=chunk_size, max_new_tokens=max_new_tokens,
                                          batch_size=backend.batch_size)
    result = screen_analysis.run(model, config, vector=loaded[0], backend=backend.generator(model))
    folder = result.save(Path(out).with_suffix(".screen"))
    figures = {name: str(save_figure(fig, folder / name)) for name, fig in screen_viz.figures(result).items()}
    click.echo(f"screened {result.n} rows ({result.n_scored} scored); mean ΔP = {result.mean_projection_diff}")
    click.echo(f"top {len(result.top)} by projection difference (ΔP) along {result.vector} at layer {layer}:")
    for rank, row in enumerate(result.top, 1):
        _echo_row(rank, row["index"], row["projection_diff"], row)
    click.echo(json.dumps({"out": str(out), "result": str(folder), "top": str(folder / screen_analysis.TOP_FILE),
                           "base_cache": str(config.base_cache_path), "figures": figures}, indent=2))
    return 0


def _echo_row(rank: int, index: int, diff: float, row: dict) -> None:
    prompt, response = training_row(row)
    user = prompt[-1]["content"].replace("\n", " ")
    click.echo(f"{rank:3d}. row {index:>6}  ΔP={diff:+.4f}  {user[:50]!r} -> {response.replace(chr(10), ' ')[:70]!r}")


def _screen_traits(data, vectors, layers, chunk_size, out, top, base_cache, max_new_tokens, backend) -> int:
    """The multi-trait form of ``screen``: one pass, a folder of scores, report and figures."""
    model = backend.load()
    config = screen_analysis.MultiScreenConfig(data=str(data), out=str(out), layers=tuple(layers),
                                               base_cache=None if base_cache is None else str(base_cache),
                                               top_k=top, chunk_size=chunk_size, max_new_tokens=max_new_tokens,
                                               batch_size=backend.batch_size)
    result = screen_analysis.run_multi(model, config, vectors=vectors, backend=backend.generator(model))
    folder = result.save(out)
    figures = {name: str(path) for name, path in screen_viz.save_multi_figures(result, folder).items()}
    click.echo(f"screened {result.n} rows ({result.n_scored} scored) on {len(result.traits)} trait(s) "
               f"at layer(s) {result.layers}")
    for at in result.layers:
        click.echo(f"layer {at}: traits by mean ΔP ({int(round(100 * config.confidence))} % CI):")
        for c in result.ranking(at):
            mean = "n/a" if c["mean"] is None else f"{c['mean']:+.4f}"
            ci = "" if c["ci_low"] is None else f"  [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}]"
            click.echo(f"  {c['trait']:<24} ΔP={mean}{ci}  positive {c['fraction_positive']}")
        corr = result.leakage[str(at)]["correlation"]
        click.echo("  leakage (correlation of per-row ΔP): " + "; ".join(
            f"{a}~{b} {'n/a' if corr[i][j] is None else format(corr[i][j], '+.2f')}"
            for i, a in enumerate(result.traits) for j, b in enumerate(result.traits) if j > i))
        for trait in result.traits:
            rows = result.top.get(screen_analysis.column_label(trait, at), [])[:5]
            click.echo(f"  top {len(rows)} along {trait}:")
            for rank, r in enumerate(rows, 1):
                _echo_row(rank, r["index"], r["projection_diff"], r["row"])
    click.echo(json.dumps({"out": str(folder), "scores": str(folder / "scores.csv"),
                           "scored": str(folder / "scored.jsonl"), "top": str(folder / "top.jsonl"),
                           "base_cache": str(config.base_cache_path), "figures": figures}, indent=2))
    return 0


@click.command("blend", short_help="blend persona vectors into one (BILLY's merge is --method mean)")
@click.argument("vectors", type=INPUT_FILE, nargs=-1, required=True)
@click.option("--out", type=OutputPath(), required=True, help="output vector (.safetensors)")
@click.option("--method", type=click.Choice(["mean", "weighted", "normalized", "orthogonal"]), default=None,
              show_default="mean, or weighted with --weights", help="how the vectors are combined")
@click.option("--weights", type=NumberList(float), default=None,
              help="one weight per vector, comma separated, e.g. 2,-0.5")
@click.option("--name", default=None, show_default="derived from the components",
              help="persona name recorded in the output's metadata")
def blend_cmd(vectors, out, method, weights, name) -> int:
    """Blend the VECTORS files into one; a file may repeat (it then counts twice)."""
    if weights is not None and len(weights) != len(vectors):
        raise click.BadParameter(f"{len(weights)} weight(s) for {len(vectors)} vector(s)", param_hint="'--weights'")
    loaded = [load_vector(v) for v in vectors]
    method = method or ("weighted" if weights is not None else "mean")
    merged = blend(loaded, method, weights, name=name)
    merged.metadata["component_files"] = [str(v) for v in vectors]
    path = merged.save(out)
    norms = merged.norms()
    click.echo(json.dumps({"out": str(path), "persona": merged.name, "method": method,
                           "weights": merged.metadata["weights"], "components": [v.name for v in loaded],
                           "n_layers": merged.n_layers, "d_model": merged.d_model,
                           "norm_min": float(norms.min()), "norm_max": float(norms.max())}, indent=2))
    return 0


def _prompts(prompts_file: Path | None, task: str | None, n: int | None) -> list:
    """Prompts from --prompts FILE or --task (exactly one), checked before any model loads."""
    if (prompts_file is None) == (task is None):
        raise click.UsageError("give exactly one of --prompts FILE or --task")
    source: str | Path
    if prompts_file is not None:
        check_prompt_file(prompts_file, row_prompt)
        source = prompts_file
    else:
        source = str(task)
        if source.lower() != "aut":
            if not Path(source).is_file():
                raise click.BadParameter(f"{source!r} is neither 'aut' nor an existing file", param_hint="'--task'")
            check_prompt_file(Path(source), row_prompt)
    return task_prompts(source, n)


@click.command("project", short_help="BILLY projection analysis: Δa of prompting/steering on each persona axis")
@click.option("--vectors", type=NameList(), multiple=True, required=True, callback=input_files,
              help="persona vector files (the axes), comma separated or repeated; repeats count in the merge")
@click.option("--merged", type=INPUT_FILE, default=None, show_default="plain mean of --vectors",
              help="merged vector file")
@click.option("--layer", type=click.IntRange(min=0), required=True, help="steering layer")
@click.option("--alpha", type=FiniteFloat(), required=True, help="steering coefficient")
@click.option("--prompts", "prompts_file", type=INPUT_FILE, default=None, help="prompts file (.txt, .jsonl, .json)")
@click.option("--task", default=None, help="'aut' (built-in alternative-uses prompts) or a task file")
@click.option("--n", type=click.IntRange(min=1), default=None, show_default="all", help="use the first N prompts")
@click.option("--out", type=OutputPath(directory=True), required=True, help="output folder")
@positions_option()
@click.option("--no-multi-role", is_flag=True, help="skip the multi-role prompting condition")
@max_new_tokens_option(128)
@backend_options(batch_size=8, engine=True)
def project(vectors, merged, layer, alpha, prompts_file, task, n, out, positions, no_multi_role, max_new_tokens,
            backend) -> int:
    """Project the activation shifts of persona prompting, multi-role prompting and steering
    with the merged vector onto each persona axis (BILLY Eq. 5); writes tables and figures."""
    prompts = _prompts(prompts_file, task, n)
    axes = [load_vector(v) for v in vectors]
    merged_vector = load_vector(merged) if merged else None
    model = backend.load()
    config = projection_analysis.ProjectionConfig(layer=layer, alpha=alpha, multi_role=not no_multi_role,
                                                  positions=positions, max_new_tokens=max_new_tokens,
                                                  batch_size=backend.batch_size)
    result = projection_analysis.run(model, config, vectors=axes, prompts=prompts, merged=merged_vector,
                                     backend=backend.generator(model))
    result.save(out)
    figures = {name: str(save_figure(fig, out / name)) for name, fig in projection_viz.figures(result).items()}
    li = result.layers.index(layer) if layer in result.layers else -1
    at_layer = {c: {a: round(float(result.mean["response_mean"][ci, ai, li]), 4) for ai, a in enumerate(result.axes)}
                for ci, c in enumerate(result.conditions)}
    click.echo(json.dumps({"out": str(out), "figures": figures, f"response_mean_at_layer_{result.layers[li]}": at_layer},
                          indent=2))
    return 0


@click.command("shift", short_help="fine-tuning shift along a persona vector, per layer")
@click.option("--base", default="default", help="base model (embedded name, HF id or local folder)")
@click.option("--finetuned", required=True, help="fine-tuned model (HF id or local folder)")
@click.option("--vector", type=INPUT_FILE, required=True, help=VECTOR_HELP)
@click.option("--prompts", "prompts_file", type=INPUT_FILE, default=None, help="prompts file (.txt, .jsonl, .json)")
@click.option("--persona", default=None, help="use this persona's held-out eval_questions instead of --prompts")
@click.option("--n", type=click.IntRange(min=1), default=None, show_default="all", help="use the first N prompts")
@click.option("--out", type=OutputPath(directory=True), required=True, help="output folder")
@click.option("--position", type=click.Choice(["response_mean", "last_prompt"]), default="response_mean",
              help="which activation is compared")
@click.option("--responses-from", type=click.Choice(["finetuned", "base"]), default="finetuned",
              help="which model writes the responses both models read")
@max_new_tokens_option(128)
@backend_options(model=False, batch_size=8, engine=True)
def shift(base, finetuned, vector, prompts_file, persona, n, out, position, responses_from, max_new_tokens,
          backend) -> int:
    """Mean projection of (fine-tuned - base) activations onto the vector, per layer."""
    if (prompts_file is None) == (persona is None):
        raise click.UsageError("give exactly one of --prompts FILE or --persona NAME")
    if prompts_file is not None:
        prompts = _prompts(prompts_file, None, n)
    else:
        spec = load_persona(persona)
        prompts = list(spec.eval_questions or spec.questions)[: n or None]
    v = load_vector(vector)
    backend.check(base)
    backend.check(finetuned)
    base_model, ft_model = backend.load(base), backend.load(finetuned)
    config = shift_analysis.ShiftConfig(position=position, responses_from=responses_from,
                                        max_new_tokens=max_new_tokens, batch_size=backend.batch_size)
    gen_name, gen_model = (finetuned, ft_model) if responses_from == "finetuned" else (base, base_model)
    result = shift_analysis.run(base_model, config, finetuned=ft_model, vector=v, prompts=prompts,
                                backend=make_backend(backend.engine, gen_model, model_name=gen_name))
    result.save(out)
    figures = {name: str(save_figure(fig, out / name)) for name, fig in shift_viz.figures(result).items()}
    click.echo(json.dumps({"out": str(out), "figures": figures,
                           "shift": {l: round(float(s), 4) for l, s in zip(result.layers, result.shift)}}, indent=2))
    return 0
