"""Core commands: ``info``, ``extract``, ``steer`` and ``generate`` (the unsteered baseline)."""

from __future__ import annotations

import json

import click

from .. import models
from ..chat import make_messages
from ..extraction import extract
from ..interop import load_vector
from ..personas import load_persona
from ..steering import Steering
from .options import (
    INPUT_FILE,
    JUDGE_HELP,
    FiniteFloat,
    OutputPath,
    backend_options,
    decoding_options,
    judge_options,
    positions_option,
)


@click.command("info", short_help="layers, d_model and hook names of a model")
@backend_options(batch_size=None)
def info(backend) -> int:
    """Load a model and print its layer count, width, hook names and layer convention as JSON."""
    model = backend.load()
    n = models.n_layers(model)
    click.echo(json.dumps({
        "model": backend.model,
        "model_id": models.model_id(model),
        "n_layers": n,
        "d_model": models.d_model(model),
        "hooks": [models.resid_post_hook_name(l) for l in range(n)],
        "layer_convention": "layer l = blocks.{l}.hook_resid_post = HF hidden_states[l+1]",
        "chat_template": bool(getattr(model.tokenizer, "chat_template", None)),
    }, indent=2))
    return 0


@click.command("extract", short_help="contrastive generation + persona vector (difference of means)")
@click.argument("persona")
@click.option("--out", type=OutputPath(), required=True, help="vector file to write (.safetensors)")
@click.option("--responses", type=OutputPath(), default=None, show_default="<out>.responses.jsonl",
              help="responses JSONL; rerunning the same command resumes from it")
@click.option("--n-per-question", type=click.IntRange(min=1), default=1,
              help="responses per question and polarity")
@click.option("--method", type=click.Choice(["mean_diff", "pca", "probe"]), default="mean_diff",
              help="how the direction is computed per layer")
@click.option("--filter", "filter_mode", type=click.Choice(["fixed", "adaptive"]), default="fixed",
              help="judge thresholds for effective pairs (with --judge)")
@judge_options(default="none", help=f"judge that filters effective pairs: {JUDGE_HELP}")
@decoding_options(max_new_tokens=128, top_p=False)
@backend_options(batch_size=8, engine=True)
def extract_cmd(persona, out, responses, n_per_question, method, filter_mode, judge, decoding, backend) -> int:
    """Generate answers under the positive and negative system prompts of PERSONA (a built-in
    name or a spec JSON file), average the residual stream over response tokens per layer and
    write the difference of means to --out. Prints the extraction report as JSON."""
    spec = load_persona(persona)
    model = backend.load()
    vector, report = extract(
        model, spec, out, responses_path=responses, n_per_question=n_per_question,
        max_new_tokens=decoding.max_new_tokens, temperature=decoding.temperature, seed=decoding.seed,
        batch_size=backend.batch_size, method=method, judge=judge.build(model, backend.model),
        filter_mode=filter_mode, backend=backend.generator(model),
    )
    click.echo(json.dumps(report, indent=2, default=str))
    return 0


def _print_completions(generator, prompts, system, decoding, batch_size, steering=None) -> int:
    gens = generator.generate_ids([make_messages(p, system) for p in prompts], steering=steering,
                                  batch_size=batch_size, progress=True, **decoding.kwargs())
    for prompt, g in zip(prompts, gens):
        click.echo(json.dumps({"prompt": prompt, "completion": g.text}, ensure_ascii=False))
    return 0


def _prompt_options(f):
    f = click.option("--system", default=None, help="system prompt for every prompt")(f)
    return click.argument("prompts", nargs=-1, required=True)(f)


@click.command("steer", short_help="generate with a persona vector added at one or more layers")
@_prompt_options
@click.option("--vector", type=INPUT_FILE, required=True, help="persona vector file (.safetensors, .pt or .gguf)")
@click.option("--layer", "layers", type=click.IntRange(min=0), multiple=True, required=True,
              help="layer to steer at (blocks.L.hook_resid_post); repeat for several layers")
@click.option("--alpha", type=FiniteFloat(), required=True,
              help="steering coefficient: h += alpha * v (0 = unsteered; negative steers away)")
@positions_option()
@decoding_options(max_new_tokens=64)
@backend_options(batch_size=8, engine=True)
def steer(prompts, system, vector, layers, alpha, positions, decoding, backend) -> int:
    """Generate a completion for each PROMPT with h += alpha * v at each --layer; prints one
    JSON line {"prompt", "completion"} per prompt. `persona-lens sweep` recommends layer and alpha."""
    v = load_vector(vector)
    steering = Steering.from_vector(v, list(layers), alpha, positions)
    model = backend.load()
    v.check_model(model)
    return _print_completions(backend.generator(model), prompts, system, decoding, backend.batch_size, steering)


@click.command("generate", short_help="generate without steering (the baseline to compare steer against)")
@_prompt_options
@decoding_options(max_new_tokens=64)
@backend_options(batch_size=8, engine=True)
def generate_cmd(prompts, system, decoding, backend) -> int:
    """Generate a completion for each PROMPT with the plain model (no vector); prints one JSON
    line {"prompt", "completion"} per prompt, like `steer`."""
    return _print_completions(backend.generator(backend.load()), prompts, system, decoding, backend.batch_size)
