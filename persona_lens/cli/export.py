"""``persona-lens export`` and ``persona-lens import``: vector files to and from other formats.

GGUF is a llama.cpp / Ollama control vector (``llama-cli --control-vector V.gguf``): the file
holds ``alpha * v[l]`` as ``direction.l`` (persona_lens layer l = llama.cpp ``direction.l``;
layer 0 has no slot); see :mod:`persona_lens.interop.gguf`. ``pt`` is the Persona Vectors
layout ``[n_layers + 1, d_model]`` with row 0 = embeddings.
"""

from __future__ import annotations

import json

import click

from ..errors import VectorFileError
from ..interop import load_vector
from ..interop.gguf import export_gguf, load_gguf_control_vector
from ..vectors import PT_MISSING_ROWS, PersonaVector
from .options import INPUT_FILE, FiniteFloat, OutputPath


@click.command("export", short_help="write a vector as a GGUF control vector (llama.cpp/Ollama) or Persona Vectors .pt")
@click.argument("vector", type=INPUT_FILE)
@click.option("--format", "fmt", type=click.Choice(["gguf", "pt"]), required=True, help="output format")
@click.option("--out", type=OutputPath(), required=True, help="output file")
@click.option("--alpha", type=FiniteFloat(), default=1.0,
              help="gguf: steering strength baked into the file (llama.cpp adds the vector as is)")
@click.option("--layer", "layers", type=click.IntRange(min=0), multiple=True,
              show_default="every layer 1..n_layers-1", help="gguf: layer to export; repeat for several")
@click.option("--model-hint", default=None, show_default="the vector's model id", help="gguf: controlvector.model_hint")
@click.option("--missing-rows", type=click.Choice(PT_MISSING_ROWS), default="error",
              help="pt: a vector without the embedding / final-norm rows (made before they were recorded, or "
                   "imported from GGUF) is refused ('error') or written with zeros in rows 0 and n ('zeros')")
def export(vector, fmt, out, alpha, layers, model_hint, missing_rows) -> int:
    """Write VECTOR (.safetensors, .pt or .gguf) in another format."""
    layers = list(layers) or None
    if fmt == "gguf" and alpha == 0:
        raise click.BadParameter("0 would write an all-zero control vector", param_hint="'--alpha'")
    if fmt == "pt" and (layers or alpha != 1.0):
        raise click.UsageError("--alpha/--layer apply to --format gguf only")
    v = load_vector(vector)
    if fmt == "gguf":
        export_gguf(v, out, alpha=alpha, layers=layers, model_hint=model_hint)
        info = {"out": str(out), "format": "gguf", "alpha": alpha, "layers": layers or list(range(1, v.n_layers)),
                "usage": f"llama-cli -m MODEL.gguf --control-vector {out}"}
    else:
        v.to_pt(out, missing_rows=missing_rows)
        info = {"out": str(out), "format": "pt", "shape": [v.n_layers + 1, v.d_model]}
    click.echo(json.dumps(info))
    return 0


@click.command("import", short_help="read a GGUF control vector or a Persona Vectors .pt into .safetensors")
@click.argument("file", type=INPUT_FILE)
@click.option("--out", type=OutputPath(), required=True, help="output vector (.safetensors)")
@click.option("--n-layers", type=click.IntRange(min=1), default=None,
              show_default="recorded in the file, else highest direction + 1", help="gguf: the model's layer count")
def import_cmd(file, out, n_layers) -> int:
    """Convert FILE (.gguf or .pt) into a persona_lens .safetensors vector."""
    if file.suffix not in (".gguf", ".pt"):
        raise VectorFileError(f"{file}: import reads .gguf or .pt files")
    if out.suffix != ".safetensors":
        raise click.BadParameter(f"{out} must end in .safetensors", param_hint="'--out'")
    v = load_gguf_control_vector(file, n_layers=n_layers) if file.suffix == ".gguf" else PersonaVector.from_pt(file)
    v.save(out)
    click.echo(json.dumps({"out": str(out), "persona": v.name, "n_layers": v.n_layers, "d_model": v.d_model}))
    return 0
