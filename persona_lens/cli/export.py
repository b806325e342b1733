"""`persona-lens export` and `persona-lens import`: vector files to and from other formats.

    persona-lens export V.safetensors --format gguf --out V.gguf [--alpha A] [--layer L ...]
    persona-lens export V.safetensors --format pt   --out V.pt
    persona-lens import V.gguf|V.pt --out V.safetensors [--n-layers N]

GGUF is a llama.cpp / Ollama control vector (``llama-cli --control-vector V.gguf``): the file
holds ``alpha * v[l]`` as ``direction.l`` (persona_lens layer l = llama.cpp ``direction.l``;
layer 0 has no slot); see :mod:`persona_lens.interop.gguf`. ``pt`` is the Persona Vectors
layout ``[n_layers + 1, d_model]`` with row 0 = embeddings.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("export", help="write a persona vector as a GGUF control vector (llama.cpp/Ollama) or .pt")
    p.add_argument("vector", help="persona vector file (.safetensors, .pt or .gguf)")
    p.add_argument("--format", required=True, choices=["gguf", "pt"])
    p.add_argument("--out", required=True)
    p.add_argument("--alpha", type=float, default=1.0,
                   help="gguf: steering strength baked into the file (llama.cpp adds the vector as is)")
    p.add_argument("--layer", type=int, action="append", default=None,
                   help="gguf: layer to export (repeat for several; default: every layer 1..n_layers-1)")
    p.add_argument("--model-hint", default=None, help="gguf: controlvector.model_hint (default: the vector's model id)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import", help="read a GGUF control vector or a Persona Vectors .pt into .safetensors")
    p.add_argument("file", help=".gguf or .pt file")
    p.add_argument("--out", required=True, help="output .safetensors")
    p.add_argument("--n-layers", type=int, default=None,
                   help="gguf: the model's layer count (default: recorded in the file, else highest direction + 1)")
    p.set_defaults(func=cmd_import)


def cmd_export(args) -> int:
    from ..vectors import PersonaVector

    vector = PersonaVector.load(args.vector)
    out = Path(args.out)
    if args.format == "gguf":
        from ..interop.gguf import export_gguf

        if args.alpha == 0:
            print("persona-lens export: --alpha 0 would write an all-zero control vector", file=sys.stderr)
            return 2
        export_gguf(vector, out, alpha=args.alpha, layers=args.layer, model_hint=args.model_hint)
        layers = args.layer or list(range(1, vector.n_layers))
        info = {"out": str(out), "format": "gguf", "alpha": args.alpha, "layers": layers,
                "usage": f"llama-cli -m MODEL.gguf --control-vector {out}"}
    else:
        if args.layer or args.alpha != 1.0:
            print("persona-lens export: --alpha/--layer apply to --format gguf only", file=sys.stderr)
            return 2
        vector.to_pt(out)
        info = {"out": str(out), "format": "pt", "shape": [vector.n_layers + 1, vector.d_model]}
    print(json.dumps(info))
    return 0


def cmd_import(args) -> int:
    from ..errors import VectorFileError
    from ..vectors import PersonaVector

    src = Path(args.file)
    if src.suffix == ".gguf":
        from ..interop.gguf import load_gguf_control_vector

        vector = load_gguf_control_vector(src, n_layers=args.n_layers)
    elif src.suffix == ".pt":
        vector = PersonaVector.from_pt(src)
    else:
        raise VectorFileError(f"{src}: import reads .gguf or .pt files")
    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise VectorFileError(f"{out}: --out must end in .safetensors")
    vector.save(out)
    print(json.dumps({"out": str(out), "persona": vector.name, "n_layers": vector.n_layers,
                      "d_model": vector.d_model}))
    return 0
