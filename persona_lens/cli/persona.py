"""`persona-lens persona ...`: list, show, validate and write persona specs."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

DEFAULT_GENERATOR = "openai:gpt-4.1-mini"


def register(sub) -> None:
    p = sub.add_parser("persona", help="list, show, validate or generate persona specs")
    psub = p.add_subparsers(dest="persona_command", metavar="ACTION")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    q = psub.add_parser("list", help="the built-in personas")
    q.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    q.set_defaults(func=cmd_list)

    q = psub.add_parser("show", help="print a persona spec as JSON")
    q.add_argument("persona", metavar="NAME_OR_PATH", help="built-in name or spec JSON file")
    q.add_argument(
        "--persona-vectors-format", action="store_true", help="only the upstream keys (instruction, questions, eval_prompt)"
    )
    q.set_defaults(func=cmd_show)

    q = psub.add_parser("new", help="write a new spec with a generator model")
    q.add_argument("name", help="trait or persona name, e.g. 'pessimistic'")
    q.add_argument("description", help="one-line description of the trait")
    q.add_argument("--out", required=True, help="output spec file (.json)")
    q.add_argument(
        "--generator", default=DEFAULT_GENERATOR, help=f"openai:MODEL | local:MODEL (default {DEFAULT_GENERATOR})"
    )
    q.add_argument("--base-url", default=None, help="OpenAI-compatible endpoint (default $OPENAI_BASE_URL or OpenAI)")
    q.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    q.add_argument("--n-pairs", type=int, default=5)
    q.add_argument("--n-questions", type=int, default=20)
    q.add_argument("--n-eval-questions", type=int, default=20)
    q.add_argument("--max-attempts", type=int, default=3)
    q.add_argument("--temperature", type=float, default=0.7)
    q.add_argument("--max-tokens", type=int, default=6000)
    q.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    q.set_defaults(func=cmd_new)

    q = psub.add_parser("validate", help="check spec files (exit 1 if any is invalid)")
    q.add_argument("files", nargs="+", metavar="FILE")
    q.set_defaults(func=cmd_validate)


def _load(name_or_path: str, *, quiet: bool = False):
    from ..personas import load_persona

    if not quiet:
        return load_persona(name_or_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_persona(name_or_path)


def cmd_list(args) -> int:
    from ..personas import builtin_names

    rows = []
    for name in builtin_names():
        spec = _load(name, quiet=True)
        rows.append(
            {
                "name": spec.name,
                "negative_style": spec.negative_style or "",
                "n_pairs": len(spec.instruction),
                "n_questions": len(spec.questions),
                "n_eval_questions": len(spec.eval_questions),
                "description": spec.description,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return 0
    if not rows:
        print("no built-in personas")
        return 0
    headers = ("name", "negative", "pairs", "questions", "description")
    table = [(r["name"], r["negative_style"], str(r["n_pairs"]), str(r["n_questions"]), r["description"]) for r in rows]
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(headers[:-1])]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)) + "  " + headers[-1])
    for t in table:
        print("  ".join(c.ljust(w) for c, w in zip(t, widths)) + "  " + t[-1])
    return 0


def cmd_show(args) -> int:
    spec = _load(args.persona, quiet=True)
    print(json.dumps(spec.to_dict(persona_vectors_format=args.persona_vectors_format), indent=2, ensure_ascii=False))
    return 0


def cmd_new(args) -> int:
    from ..errors import PersonaSpecError
    from ..personas.generate_spec import generate_spec, make_generator

    out = Path(args.out)
    if out.exists() and not args.force:
        raise PersonaSpecError(f"{out} exists; pass --force to overwrite it")
    kind = args.generator.partition(":")[0].lower()
    kwargs = {}
    if kind == "openai":
        kwargs = {"base_url": args.base_url, "api_key_env": args.api_key_env, "cache_dir": None}
    generator = make_generator(args.generator, **kwargs)
    spec = generate_spec(
        args.name,
        args.description,
        generator,
        n_pairs=args.n_pairs,
        n_questions=args.n_questions,
        n_eval_questions=args.n_eval_questions,
        max_attempts=args.max_attempts,
        temperature=args.temperature,
        max_tokens=args.max_tokens,
    )
    spec.save(out)
    print(
        f"wrote {out}: {len(spec.instruction)} pairs, {len(spec.questions)} questions, "
        f"{len(spec.eval_questions)} eval questions"
    )
    return 0


def cmd_validate(args) -> int:
    from ..errors import PersonaSpecError
    from ..personas import PersonaSpec

    failed = 0
    for file in args.files:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                spec = PersonaSpec.load(file)
            except (PersonaSpecError, OSError) as exc:
                failed += 1
                print(f"FAIL {file}: {exc}")
                continue
        print(
            f"OK   {file}: {spec.name} ({len(spec.instruction)} pairs, {len(spec.questions)} questions, "
            f"{len(spec.eval_questions)} eval questions)"
        )
        for w in caught:
            print(f"     warning: {w.message}")
    if failed:
        print(f"{failed} of {len(args.files)} file(s) invalid", file=sys.stderr)
    return 1 if failed else 0
