"""``persona-lens persona ...``: list, show, validate and write persona specs."""

from __future__ import annotations

import json
import warnings
from typing import Any

import click

from .. import judges
from ..errors import JudgeError, PersonaSpecError
from ..personas import PersonaSpec, builtin_names, load_persona
from ..personas.generate_spec import generate_spec
from .options import JudgeOptions, OutputPath

DEFAULT_GENERATOR = "openai:gpt-4.1-mini"


def _quiet_load(name_or_path: str) -> PersonaSpec:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_persona(name_or_path)


@click.group("persona", short_help="list, show, validate or generate persona specs")
def persona() -> None:
    """Persona specs: the Persona Vectors JSON (instruction pairs, questions, eval prompt)."""


@persona.command("list", short_help="the built-in personas")
@click.option("--json", "as_json", is_flag=True, help="print a JSON list instead of a table")
def list_cmd(as_json) -> int:
    """The built-in personas with their pair and question counts."""
    rows: list[dict[str, Any]] = []
    for name in builtin_names():
        spec = _quiet_load(name)
        rows.append({"name": spec.name, "negative_style": spec.negative_style or "", "n_pairs": len(spec.instruction),
                     "n_questions": len(spec.questions), "n_eval_questions": len(spec.eval_questions),
                     "description": spec.description})
    if as_json:
        click.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return 0
    if not rows:
        click.echo("no built-in personas")
        return 0
    headers = ("name", "negative", "pairs", "questions", "description")
    table = [(str(r["name"]), str(r["negative_style"]), str(r["n_pairs"]), str(r["n_questions"]), str(r["description"]))
             for r in rows]
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(headers[:-1])]
    click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths)) + "  " + headers[-1])
    for t in table:
        click.echo("  ".join(c.ljust(w) for c, w in zip(t, widths)) + "  " + t[-1])
    return 0


@persona.command("show", short_help="print a persona spec as JSON")
@click.argument("name_or_path", metavar="NAME_OR_PATH")
@click.option("--persona-vectors-format", is_flag=True, help="only the upstream keys (instruction, questions, eval_prompt)")
def show(name_or_path, persona_vectors_format) -> int:
    """Print the built-in persona NAME, or the spec file PATH, as JSON."""
    spec = _quiet_load(name_or_path)
    click.echo(json.dumps(spec.to_dict(persona_vectors_format=persona_vectors_format), indent=2, ensure_ascii=False))
    return 0


@persona.command("new", short_help="write a new spec with a generator model")
@click.argument("name")
@click.argument("description")
@click.option("--out", type=OutputPath(), required=True, help="output spec file (.json)")
@click.option("--generator", default=DEFAULT_GENERATOR, help="openai:MODEL | local:MODEL")
@click.option("--base-url", default=None, show_default="$OPENAI_BASE_URL, else OpenAI",
              help="OpenAI-compatible endpoint for --generator openai:MODEL")
@click.option("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
@click.option("--n-pairs", type=click.IntRange(min=1), default=5, help="contrastive instruction pairs")
@click.option("--n-questions", type=click.IntRange(min=1), default=20, help="extraction questions")
@click.option("--n-eval-questions", type=click.IntRange(min=0), default=20, help="held-out evaluation questions")
@click.option("--max-attempts", type=click.IntRange(min=1), default=3, help="generator calls before giving up")
@click.option("--temperature", type=click.FloatRange(min=0.0), default=0.7, help="generator temperature")
@click.option("--max-tokens", type=click.IntRange(min=1), default=6000, help="generator output budget")
@click.option("--force", is_flag=True, help="overwrite --out if it exists")
def new(name, description, out, generator, base_url, api_key_env, n_pairs, n_questions, n_eval_questions,
        max_attempts, temperature, max_tokens, force) -> int:
    """Write a spec for the trait NAME described by DESCRIPTION (one line) with a generator model."""
    if out.exists() and not force:
        raise PersonaSpecError(f"{out} exists; pass --force to overwrite it")
    options = JudgeOptions(generator, base_url, api_key_env)
    try:
        kind = options.kind
    except JudgeError as exc:
        raise click.BadParameter(str(exc), param_hint="'--generator'") from None
    if kind not in ("openai", "local"):
        raise click.BadParameter(f"{generator!r}: expected openai:MODEL or local:MODEL", param_hint="'--generator'")
    options.check()
    # a spec is written once: no score cache for the generator's calls
    kwargs = {"base_url": base_url, "api_key_env": api_key_env, "cache_dir": None} if kind == "openai" else {}
    spec = generate_spec(name, description, judges.make_generator(generator, **kwargs), n_pairs=n_pairs, n_questions=n_questions,
                         n_eval_questions=n_eval_questions, max_attempts=max_attempts, temperature=temperature,
                         max_tokens=max_tokens)
    spec.save(out)
    click.echo(f"wrote {out}: {len(spec.instruction)} pairs, {len(spec.questions)} questions, "
               f"{len(spec.eval_questions)} eval questions")
    return 0


@persona.command("validate", short_help="check spec files (exit 1 if any is invalid)")
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
def validate(files) -> int:
    """Check every spec FILE and report each; a bad file does not stop the others."""
    failed = 0
    for file in files:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                spec = PersonaSpec.load(file)
            except (PersonaSpecError, OSError) as exc:
                failed += 1
                click.echo(f"FAIL {file}: {exc}")
                continue
        click.echo(f"OK   {file}: {spec.name} ({len(spec.instruction)} pairs, {len(spec.questions)} questions, "
                   f"{len(spec.eval_questions)} eval questions)")
        for w in caught:
            click.echo(f"     warning: {w.message}")
    if failed:
        click.echo(f"{failed} of {len(files)} file(s) invalid", err=True)
    return 1 if failed else 0
