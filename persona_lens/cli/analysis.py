"""Analysis commands: blend, project, monitor, screen, shift."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _model_args(p: argparse.ArgumentParser, flag: str = "--model") -> None:
    p.add_argument(flag, default="default", help="embedded name (default, gemma-3-270m), HF id or local path")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None, help="float32, bfloat16, float16")


def _file_scoring_parser(sub, name: str, *, help: str, data: str, data_help: str, out_help: str):
    """A parser for a command that scores a JSONL file along a vector at a layer (monitor, screen):
    the data file, ``--vector``, ``--layer``, ``--out``; finish it with :func:`_streaming_args`."""
    p = sub.add_parser(name, help=help)
    p.add_argument(data, help=data_help)
    p.add_argument("--vector", required=True)
    p.add_argument("--layer", type=int, required=True)
    p.add_argument("--out", required=True, help=out_help)
    return p


def _streaming_args(p: argparse.ArgumentParser, max_new_tokens_help: str | None = None) -> None:
    """Generation length, streaming chunk and batch sizes, and the model options."""
    p.add_argument("--max-new-tokens", type=int, default=128, help=max_new_tokens_help)
    p.add_argument("--chunk-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    _model_args(p)


def _load(name: str, args):
    from ..models import load_model

    return load_model(name, device=args.device, dtype=args.dtype)


def _vector(path: str):
    from ..vectors import PersonaVector

    return PersonaVector.load(path)


def register(sub) -> None:
    p = sub.add_parser("blend", help="blend persona vectors into one (BILLY's merge is --method mean)")
    p.add_argument("vectors", nargs="+", help="vector files; a file may repeat (it then counts twice)")
    p.add_argument("--out", required=True, help="output vector (.safetensors)")
    p.add_argument("--method", default=None, choices=["mean", "weighted", "normalized", "orthogonal"],
                   help="default: mean, or weighted when --weights is given")
    p.add_argument("--weights", type=float, nargs="+", default=None, help="one weight per vector")
    p.add_argument("--name", default=None, help="persona name recorded in the output's metadata")
    p.set_defaults(func=cmd_blend)

    p = sub.add_parser("project", help="BILLY projection analysis: Δa of prompting/steering conditions on each persona axis")
    p.add_argument("--vectors", nargs="+", required=True, help="persona vector files (the axes; repeats count in the merge)")
    p.add_argument("--merged", default=None, help="merged vector file (default: plain mean of --vectors)")
    p.add_argument("--layer", type=int, required=True, help="steering layer")
    p.add_argument("--alpha", type=float, required=True, help="steering coefficient")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompts", default=None, help="prompts file (.txt, .jsonl, .json)")
    src.add_argument("--task", default=None, help="'aut' (built-in alternative-uses prompts) or a task file")
    p.add_argument("--n", type=int, default=None, help="use the first N prompts")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--positions", default="response", choices=["response", "prompt", "all"])
    p.add_argument("--no-multi-role", action="store_true", help="skip the multi-role prompting condition")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    _model_args(p)
    p.set_defaults(func=cmd_project)

    p = _file_scoring_parser(
        sub, "monitor", help="last-prompt-token projection score of each prompt (before generating)",
        data="prompts", data_help="JSONL rows with 'messages' or 'system' + 'prompt'",
        out_help="output JSONL (rows + 'score')")
    p.add_argument("--judge", default=None, help="openai:MODEL | local:MODEL | embedding: also generate, judge "
                   "trait expression and report Pearson r")
    p.add_argument("--persona", default=None, help="persona name or spec file for the judge's eval prompt "
                   "(default: the vector's persona)")
    _streaming_args(p)
    p.set_defaults(func=cmd_monitor)

    p = _file_scoring_parser(
        sub, "screen", help="flag training rows by projection difference vs the base model's own response",
        data="data", data_help="JSONL rows: 'messages' ending with the assistant response, or 'prompt' + 'response'",
        out_help="output JSONL (rows + projection, base_projection, projection_diff)")
    p.add_argument("--top", type=int, default=20, help="print and write the K most flagged rows")
    p.add_argument("--base-cache", default=None, help="base-response cache JSONL (default: <out>.base_cache.jsonl)")
    _streaming_args(p, "base response length")
    p.set_defaults(func=cmd_screen)

    p = sub.add_parser("shift", help="fine-tuning shift along a persona vector, per layer")
    p.add_argument("--base", default="default", help="base model (name or path)")
    p.add_argument("--finetuned", required=True, help="fine-tuned model (name or path)")
    p.add_argument("--vector", required=True)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompts", default=None, help="prompts file (.txt, .jsonl, .json)")
    src.add_argument("--persona", default=None, help="use this persona's held-out eval_questions")
    p.add_argument("--n", type=int, default=None, help="use the first N prompts")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--position", default="response_mean", choices=["response_mean", "last_prompt"])
    p.add_argument("--responses-from", default="finetuned", choices=["finetuned", "base"])
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None)
    p.set_defaults(func=cmd_shift)


# --------------------------------------------------------------------------- commands


def cmd_blend(args) -> int:
    from ..blend import blend

    vectors = [_vector(v) for v in args.vectors]
    method = args.method or ("weighted" if args.weights is not None else "mean")
    out = blend(vectors, method, args.weights, name=args.name)
    out.metadata["component_files"] = list(args.vectors)
    path = out.save(args.out)
    norms = out.norms()
    print(json.dumps({"out": str(path), "persona": out.name, "method": method, "weights": out.metadata["weights"],
                      "components": [v.name for v in vectors], "n_layers": out.n_layers, "d_model": out.d_model,
                      "norm_min": float(norms.min()), "norm_max": float(norms.max())}, indent=2))
    return 0


def cmd_project(args) -> int:
    from ..analysis.projection import projection_analysis, task_prompts
    from ..plots_analysis import projection_figure, save_figure

    vectors = [_vector(v) for v in args.vectors]
    merged = _vector(args.merged) if args.merged else None
    prompts = task_prompts(args.prompts or args.task, args.n)
    model = _load(args.model, args)
    result = projection_analysis(model, vectors, prompts, layer=args.layer, alpha=args.alpha, merged=merged,
                                 multi_role=not args.no_multi_role, positions=args.positions,
                                 max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    out = Path(args.out)
    paths = {k: str(v) for k, v in result.save(out).items()}
    for pos in result.positions:
        paths[f"figure_{pos}"] = str(save_figure(projection_figure(result, pos), out / f"projection_{pos}"))
    li = result.layers.index(args.layer) if args.layer in result.layers else -1
    at_layer = {c: {a: round(float(result.mean["response_mean"][ci, ai, li]), 4) for ai, a in enumerate(result.axes)}
                for ci, c in enumerate(result.conditions)}
    print(json.dumps({"files": paths, f"response_mean_at_layer_{result.layers[li]}": at_layer}, indent=2))
    return 0


def cmd_monitor(args) -> int:
    from ..analysis.monitor import monitor_file

    vector = _vector(args.vector)
    judge = spec = None
    if args.judge and args.judge != "none":
        from ..judges import make_judge
        from ..personas import load_persona

        spec = load_persona(args.persona or vector.name)
        judge = make_judge(args.judge)
    model = _load(args.model, args)
    summary = monitor_file(model, vector, args.layer, args.prompts, args.out, judge=judge, spec=spec,
                           max_new_tokens=args.max_new_tokens, chunk_size=args.chunk_size, batch_size=args.batch_size)
    print(json.dumps(summary.to_dict(), indent=2))
    return 0


def cmd_screen(args) -> int:
    from ..analysis.screen import screen_file

    vector = _vector(args.vector)
    model = _load(args.model, args)
    summary = screen_file(model, vector, args.layer, args.data, args.out, base_cache=args.base_cache, top_k=args.top,
                          chunk_size=args.chunk_size, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    print(f"screened {summary.n} rows ({summary.n_scored} scored); mean ΔP = {summary.mean_projection_diff}")
    print(f"top {len(summary.top)} by projection difference (ΔP) along {summary.vector} at layer {summary.layer}:")
    from ..analysis.screen import training_row
    from ..io import iter_jsonl

    for rank, row in enumerate(iter_jsonl(summary.top_path), 1):
        prompt, response = training_row(row)
        user = prompt[-1]["content"].replace("\n", " ")
        print(f"{rank:3d}. row {row['index']:>6}  ΔP={row['projection_diff']:+.4f}  {user[:50]!r} -> "
              f"{response.replace(chr(10), ' ')[:70]!r}")
    print(json.dumps({"out": summary.out, "top": summary.top_path, "figure": summary.figure,
                      "summary": summary.summary_path}, indent=2))
    return 0


def cmd_shift(args) -> int:
    from ..analysis.projection import task_prompts
    from ..analysis.shift import finetuning_shift
    from ..plots_analysis import save_figure, shift_figure

    vector = _vector(args.vector)
    if args.prompts:
        prompts = task_prompts(args.prompts, args.n)
    else:
        from ..personas import load_persona

        spec = load_persona(args.persona)
        prompts = list(spec.eval_questions or spec.questions)[: args.n or None]
    base = _load(args.base, args)
    ft = _load(args.finetuned, args)
    result = finetuning_shift(base, ft, vector, prompts, position=args.position, responses_from=args.responses_from,
                              max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    out = Path(args.out)
    paths = {k: str(v) for k, v in result.save(out).items()}
    paths["figure"] = str(save_figure(shift_figure(result), out / "shift"))
    print(json.dumps({"files": paths, "shift": {l: round(float(s), 4) for l, s in zip(result.layers, result.shift)}},
                     indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    from . import main

    sys.exit(main())
