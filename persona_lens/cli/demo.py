"""Commands ``sweep`` (layer x steering-strength sweep) and ``demo`` (the end-to-end offline demo)."""

from __future__ import annotations

import json


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.replace(" ", ",").split(",") if x.strip()]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.replace(" ", ",").split(",") if x.strip()]


DEFAULT_ALPHAS = (-0.25, 0.0, 0.1, 0.2, 0.35, 0.5)  # = persona_lens.analysis.sweep.DEFAULT_ALPHAS (no torch import here)


def register(sub) -> None:
    p = sub.add_parser("sweep", help="layer sweep: norms, held-out AUROC/Cohen's d, steering effect over layer x alpha")
    p.add_argument("--vector", required=True, help="persona vector (.safetensors)")
    p.add_argument("--persona", required=True, help="the vector's persona spec: built-in name or JSON path")
    p.add_argument("--out", required=True, help="output folder (tables, figures, cached generations)")
    p.add_argument("--layers", type=_ints, default=None, help="layers to steer at, e.g. 4,8,12 (default: ~6 spread)")
    p.add_argument("--alphas", type=_floats, default=list(DEFAULT_ALPHAS),
                   help="steering strengths, comma separated (default: fractions %(default)s); "
                        "write --alphas=-0.25,0,0.1 (with =) when the list starts with a minus")
    p.add_argument("--alpha-mode", default="fraction", choices=["fraction", "raw"],
                   help="fraction: alpha*||v||/||h||; raw: the coefficient itself")
    p.add_argument("--n-eval", type=int, default=8, help="held-out questions (x pos/neg prompts)")
    p.add_argument("--n-steer", type=int, default=4, help="steering prompts (the first held-out questions)")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--readout-layer", type=int, default=None,
                   help="layer where generated texts are measured (default: largest held-out Cohen's d)")
    p.add_argument("--judge", default="none", help="none | embedding | openai:MODEL | local:MODEL")
    p.add_argument("--threads", default="auto", help="torch CPU threads: a number, 'default' or 'auto'")
    p.add_argument("--model", default="default")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("demo", help="the end-to-end offline demo: extract, blend, sweep, BILLY, monitor, screen, report")
    p.add_argument("--out", required=True, help="output folder (reruns reuse its cached stages)")
    p.add_argument("--quick", action="store_true", help="small settings (~2-4 minutes on 2 CPU cores)")
    p.add_argument("--model", default="default", help="model name (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--judge", default="embedding", help="trait judge: embedding (offline proxy) | none | openai:M | local:M")
    p.add_argument("--threads", default="auto", help="torch CPU threads: a number, 'default' or 'auto'")
    p.add_argument("--force", action="store_true", help="rerun every stage even when cached")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (stage lines still print)")
    p.set_defaults(func=cmd_demo)


def cmd_sweep(args) -> int:
    from ..analysis.sweep import layer_sweep
    from ..demo import set_threads
    from ..models import load_model
    from ..personas import load_persona
    from ..vectors import PersonaVector

    vector = PersonaVector.load(args.vector)
    spec = load_persona(args.persona)
    judge = None
    if args.judge and args.judge != "none":
        from ..judges import make_judge

        judge = make_judge(args.judge)
    set_threads(args.threads)
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    res = layer_sweep(model, vector, spec, layers=args.layers, alphas=args.alphas, alpha_mode=args.alpha_mode,
                      n_eval=args.n_eval, n_steer=args.n_steer, max_new_tokens=args.max_new_tokens, judge=judge,
                      out_dir=args.out, batch_size=args.batch_size, readout_layer=args.readout_layer)
    print(res.summary_text())
    print(json.dumps(res.recommendation, indent=2))
    return 0


def cmd_demo(args) -> int:
    from ..demo import run_demo

    summary = run_demo(args.out, quick=args.quick, model=args.model, judge=args.judge, threads=args.threads,
                       force=args.force, progress=not args.no_progress)
    for key, lines in summary["summary"].items():
        for line in lines:
            print(f"- {line}")
    print(f"report: {summary['out']}/report.html  ({summary['total_seconds']:.0f}s; "
          f"{len(summary['ran'])} stage(s) ran, {len(summary['skipped'])} cached)")
    return 0
