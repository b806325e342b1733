"""``persona-lens fold``: write a checkpoint with steering folded into its weights
(:mod:`persona_lens.fold`), loadable by plain transformers, vLLM (``hf``) or llama.cpp (``gguf``)."""

from __future__ import annotations

import json

import click

from ..fold import FORMATS, SUMMARY_NAME, fold
from ..interop import load_vector
from .options import INPUT_FILE, FiniteFloat, OutputPath, backend_options


@click.command("fold", short_help="write a model whose weights add alpha * v[L] after layer L (no persona_lens needed)")
@click.option("--vector", type=INPUT_FILE, required=True,
              help="persona vector file (.safetensors, .pt or .gguf); a blend from `persona-lens blend` folds the same")
@click.option("--layer", "layers", type=click.IntRange(min=0), multiple=True, required=True,
              help="layer to fold at (blocks.L.hook_resid_post); repeat for several layers")
@click.option("--alpha", type=FiniteFloat(), required=True, help="steering coefficient baked in: h += alpha * v[L]")
@click.option("--out", type=OutputPath(directory=True), required=True,
              help="folder to write (must not exist unless --overwrite); fold.json beside the weights")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="hf",
              help="hf = transformers/vLLM folder (safetensors, mlp_bias=true); gguf = llama.cpp file copied from "
                   "the model's GGUF with blk.L.ffn_down.bias added")
@click.option("--gguf-source", type=INPUT_FILE, default=None, show_default="the embedded model's GGUF",
              help="gguf: the model's GGUF file to copy")
@click.option("--overwrite", is_flag=True, help="replace --out if it exists")
@backend_options(batch_size=None)
def fold_cmd(vector, layers, alpha, out, fmt, gguf_source, overwrite, backend) -> int:
    """Fold h += alpha * v[L] (every position, as `steer --positions all`) into the weights of
    --model and write the result to --out. The folded model needs no persona_lens code: load it
    with AutoModelForCausalLM.from_pretrained(OUT), `vllm serve OUT`, or `llama-cli -m OUT/*.gguf`.
    Llama-family models only (the MLP down projection's bias is the slot); other architectures
    fail with an error naming them. Prints the summary (also OUT/fold.json) as JSON."""
    v = load_vector(vector)
    if fmt == "hf" and gguf_source is not None:
        raise click.UsageError("--gguf-source is for --format gguf")
    click.echo(f"loading {backend.model} ...", err=True)
    model = backend.load()
    click.echo(f"folding alpha={alpha:g} at layers {list(layers)} -> {out} ({fmt})", err=True)
    summary = fold(model, v, list(layers), alpha, out, fmt=fmt, gguf_source=gguf_source, overwrite=overwrite)
    click.echo(f"wrote {out} and {out / SUMMARY_NAME}", err=True)
    click.echo(json.dumps({"out": str(out), **summary}, indent=2, default=str))
    return 0
