"""Core commands: info, extract, steer."""

from __future__ import annotations

import argparse
import json
import sys


def _model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default", help="embedded name (default, gemma-3-270m), HF id or local path")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None, help="float32, bfloat16, float16")


def _load(args):
    from ..models import load_model

    return load_model(args.model, device=args.device, dtype=args.dtype)


def register(sub) -> None:
    p = sub.add_parser("info", help="layers, d_model and hook names of a model")
    _model_arg(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("extract", help="contrastive generation + persona vector (difference of means)")
    p.add_argument("persona", help="built-in persona name or a spec JSON path")
    p.add_argument("--out", required=True, help="vector file (.safetensors)")
    p.add_argument("--responses", default=None, help="responses JSONL (default: next to --out); resumable")
    _model_arg(p)
    p.add_argument("--n-per-question", type=int, default=1)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--method", default="mean_diff", choices=["mean_diff", "pca", "probe"])
    p.add_argument("--judge", default="none", help="none | openai:MODEL | local:MODEL | embedding")
    p.add_argument("--filter", default="fixed", choices=["fixed", "adaptive"], help="effective-pair thresholds")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("steer", help="generate with a persona vector added at a layer")
    p.add_argument("prompts", nargs="+")
    p.add_argument("--vector", required=True)
    p.add_argument("--layer", type=int, required=True, action="append", help="repeat for several layers")
    p.add_argument("--alpha", type=float, required=True)
    p.add_argument("--positions", default="response", choices=["response", "prompt", "all"])
    p.add_argument("--system", default=None)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    _model_arg(p)
    p.set_defaults(func=cmd_steer)


def cmd_info(args) -> int:
    from ..models import d_model, model_id, n_layers, resid_post_hook_name

    model = _load(args)
    L = n_layers(model)
    info = {
        "model": args.model,
        "model_id": model_id(model),
        "n_layers": L,
        "d_model": d_model(model),
        "hooks": [resid_post_hook_name(l) for l in range(L)],
        "layer_convention": "layer l = blocks.{l}.hook_resid_post = HF hidden_states[l+1]",
        "chat_template": bool(getattr(model.tokenizer, "chat_template", None)),
    }
    print(json.dumps(info, indent=2))
    return 0


def cmd_extract(args) -> int:
    from ..extract import extract
    from ..personas import load_persona

    from ..judges import make_judge
    from ..judges.base import parse_backend

    spec = load_persona(args.persona)
    model = _load(args)
    kind, judge_model = parse_backend(args.judge or "none")
    kwargs = {}
    if kind == "local" and judge_model in ("", args.model):
        kwargs["model"] = model  # judge with the loaded model instead of loading a second copy
    judge = make_judge(args.judge or "none", **kwargs)
    vector, report = extract(
        model, spec, args.out, responses_path=args.responses, n_per_question=args.n_per_question,
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed,
        batch_size=args.batch_size, method=args.method, judge=judge, filter_mode=args.filter,
    )
    print(json.dumps(report, indent=2, default=str))
    return 0


def cmd_steer(args) -> int:
    from ..chat import make_messages
    from ..generate import generate
    from ..steering import Steering
    from ..vectors import PersonaVector

    vector = PersonaVector.load(args.vector)
    model = _load(args)
    vector.check_model(model)
    steering = Steering.from_vector(vector, args.layer, args.alpha, args.positions)
    prompts = [make_messages(p, args.system) for p in args.prompts]
    outs = generate(model, prompts, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                    seed=args.seed, steering=steering)
    for p, o in zip(args.prompts, outs):
        sys.stdout.write(json.dumps({"prompt": p, "completion": o}, ensure_ascii=False) + "\n")
    return 0
