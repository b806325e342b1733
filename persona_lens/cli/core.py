"""Core commands: ``info``, ``extract``, ``steer`` and ``generate`` (the unsteered baseline, or
steered at a calibrated ``--strength``)."""

from __future__ import annotations

import json

import click

from .. import models
from ..chat import make_messages
from ..dose import alpha_for_strength, read_card
from ..extraction import extract
from ..interop import load_vector
from ..operators import OPERATORS
from ..personas import load_persona
from ..positions import Positions, check_positions
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
    strength_option,
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


def _print_completions(generator, prompts, system, decoding, batch_size, steering=None, record=None) -> int:
    """One JSON line per prompt: ``{"prompt", "completion"}`` plus ``record`` (the calibrated
    steering used) when given."""
    gens = generator.generate_ids([make_messages(p, system) for p in prompts], steering=steering,
                                  batch_size=batch_size, progress=True, **decoding.kwargs())
    for prompt, g in zip(prompts, gens):
        click.echo(json.dumps({"prompt": prompt, "completion": g.text, **(record or {})}, ensure_ascii=False))
    return 0


def _prompt_options(f):
    f = click.option("--system", default=None, help="system prompt for every prompt")(f)
    return click.argument("prompts", nargs=-1, required=True)(f)


def calibrated_steering(v, strength: float, layers, positions: Positions | None,
                        source=None) -> tuple[Steering, dict]:
    """The steering for ``--strength`` through the vector's dose card (:mod:`persona_lens.dose`),
    at the one ``--layer`` given or the card's layer, and what to record: strength, layer, alpha,
    positions (the card's when ``positions`` is None) and the card's judge."""
    card = read_card(v, source=source)
    if len(layers) > 1:
        raise click.BadParameter("--strength steers at one layer (the dose card's curve is per layer); give at "
                                 "most one --layer", param_hint="'--layer'")
    layer, alpha = alpha_for_strength(card, strength, layers[0] if layers else None)
    positions = positions or check_positions(card.positions)
    record = {"strength": strength, "layer": layer, "alpha": alpha, "positions": positions, "dose_judge": card.judge}
    b, p = card.baseline.get("mean"), card.positive.get("mean")
    click.echo(f"strength {strength:g} -> alpha {alpha:.6g} at layer {layer} (dose card: {card.judge}, trait score "
               f"unsteered {b if b is None else f'{b:.3g}'}, positive prompt {p if p is None else f'{p:.3g}'})",
               err=True)
    return Steering.from_vector(v, [layer], alpha, positions), record


def _explicit(ctx: click.Context, name: str) -> bool:
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


@click.command("steer", short_help="generate with a persona vector added at one or more layers")
@_prompt_options
@click.option("--vector", type=INPUT_FILE, required=True, help="persona vector file (.safetensors, .pt or .gguf)")
@click.option("--layer", "layers", type=click.IntRange(min=0), multiple=True,
              help="layer to steer at (blocks.L.hook_resid_post); repeat for several layers (required with --alpha; "
                   "with --strength: default the dose card's layer)")
@click.option("--alpha", type=FiniteFloat(), default=None,
              help="steering coefficient: h += alpha * v (0 = unsteered; negative steers away)")
@strength_option()
@click.option("--operator", type=click.Choice(OPERATORS), default="add",
              help="add: h += alpha * v; ablate: remove h's component along v; cap: clamp h's projection on "
                   "v/||v|| into --cap")
@click.option("--cap", "cap_bounds", nargs=2, type=float, default=None, metavar="LO HI",
              help="with --operator cap: bounds of the projection on v/||v|| (raw activation units; inf / -inf "
                   "leave a side open)")
@positions_option()
@decoding_options(max_new_tokens=64)
@backend_options(batch_size=8, engine=True)
@click.pass_context
def steer(ctx, prompts, system, vector, layers, alpha, strength, operator, cap_bounds, positions, decoding,
          backend) -> int:
    """Generate a completion for each PROMPT with h += alpha * v at each --layer; prints one
    JSON line {"prompt", "completion"} per prompt. `persona-lens sweep` recommends layer and alpha.
    With --strength S instead of --alpha, alpha comes from the vector's dose card (`persona-lens
    calibrate`) and each line also records strength, layer, alpha and positions. --operator
    ablate|cap set the projection on v instead of adding (no --alpha or --strength)."""
    if cap_bounds is not None and operator != "cap":
        raise click.UsageError("--cap is for --operator cap")
    if operator != "add":
        if alpha is not None or strength is not None:
            raise click.UsageError(f"--operator {operator} sets the projection on the vector and takes no --alpha "
                                   "or --strength")
        if not layers:
            raise click.UsageError(f"--operator {operator} needs at least one --layer")
        if operator == "cap" and cap_bounds is None:
            raise click.UsageError("--operator cap needs --cap LO HI")
    elif (alpha is None) == (strength is None):
        raise click.UsageError("give either --alpha or --strength (exactly one)")
    if alpha is not None and not layers:
        raise click.UsageError("--alpha needs at least one --layer")
    v = load_vector(vector)
    record = None
    if strength is not None:
        steering, record = calibrated_steering(v, strength, layers, positions if _explicit(ctx, "positions") else None,
                                               vector)
    elif operator != "add":
        steering = Steering.from_vector(v, list(layers), None, positions, operator=operator,
                                        cap=tuple(cap_bounds) if cap_bounds else None)
        record = {"operator": operator, "layers": list(layers), "positions": positions,
                  **({"cap": list(cap_bounds)} if cap_bounds else {})}
    else:
        steering = Steering.from_vector(v, list(layers), alpha, positions)
    model = backend.load()
    v.check_model(model)
    return _print_completions(backend.generator(model), prompts, system, decoding, backend.batch_size, steering,
                              record)


@click.command("generate", short_help="generate without steering (the baseline to compare steer against)")
@_prompt_options
@click.option("--vector", type=INPUT_FILE, default=None,
              help="with --strength: a calibrated persona vector to steer with (.safetensors with a dose card)")
@strength_option()
@click.option("--layer", type=click.IntRange(min=0), default=None, show_default="the dose card's layer",
              help="with --strength: the layer to steer at")
@decoding_options(max_new_tokens=64)
@backend_options(batch_size=8, engine=True)
def generate_cmd(prompts, system, vector, strength, layer, decoding, backend) -> int:
    """Generate a completion for each PROMPT with the plain model (no vector); prints one JSON
    line {"prompt", "completion"} per prompt, like `steer`. With --vector V --strength S it
    steers at the calibrated dose instead (as `steer --strength`), recording strength, layer and alpha."""
    if (vector is None) != (strength is None):
        raise click.UsageError("--vector and --strength go together (a calibrated dose of that vector)")
    if layer is not None and vector is None:
        raise click.UsageError("--layer is for --vector/--strength")
    steering, record = None, None
    if vector is not None:
        v = load_vector(vector)
        steering, record = calibrated_steering(v, strength, [] if layer is None else [layer], None, vector)
    model = backend.load()
    if vector is not None:
        v.check_model(model)
    return _print_completions(backend.generator(model), prompts, system, decoding, backend.batch_size, steering,
                              record)
