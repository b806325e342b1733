"""Weight-folded export: steering baked into a checkpoint that needs no persona_lens code.

Runtime steering with ``positions="all"`` adds the constant ``alpha * v[L]`` to the output of
decoder layer ``L`` (``blocks.L.hook_resid_post``) at every position. A bias on the last linear
map of the layer's MLP adds the same constant, because that map's output is added straight to
the residual stream::

    Llama decoder layer:  h = h + attn(norm(h));  h = h + down_proj(act(gate(x)) * up(x))

so ``down_proj.bias = alpha * v[L]`` makes the layer output ``h + mlp + alpha * v[L]`` — the
steered stream. Only the summation order of three float terms differs from runtime steering
(``(h + mlp) + d`` versus ``h + (mlp + d)``), so logits agree to float rounding and greedy tokens
are identical in float32.

Which architectures (:data:`FOLD_SLOTS`), verified by reading each runtime's source:

* ``llama`` (Llama, SmolLM2 and other ``LlamaForCausalLM`` checkpoints): transformers'
  ``LlamaMLP`` builds gate/up/down with ``bias=config.mlp_bias`` and ``LlamaDecoderLayer`` adds
  the MLP output to the residual with no norm in between; vLLM's ``LlamaMLP`` reads
  ``config.mlp_bias`` the same way; llama.cpp's ``llama`` architecture loads ``blk.N.ffn_down.bias``
  as an optional tensor and ``build_ffn`` adds it after the down projection, before the residual
  add (``src/models/llama.cpp``). ``mlp_bias=True`` gives *every* layer gate/up/down biases; all
  are zero except ``down_proj`` of the folded layers, so the other layers compute exactly as before.

Everything else raises :class:`~persona_lens.errors.FoldUnsupportedError` naming the architecture
(:data:`NO_SLOT` says why for common ones: Gemma 2/3 and OLMo 2 normalize the MLP output before
the residual add, so a bias there is not a constant; Mistral, Qwen2/3, Phi-3 and Gemma have no
bias option on ``down_proj``/``o_proj``).

Several layers and blends fold the same way (a blend is a :class:`PersonaVector`); a slot that
already holds a bias gets the steering added to it.

Formats: ``hf`` writes ``save_pretrained`` of a clean copy in the model's dtype (float32 when
loaded on CPU) with ``mlp_bias: true`` in ``config.json``, plus tokenizer and generation config;
``gguf`` copies the model's source GGUF (the embedded models', or ``gguf_source``) tensor for
tensor and key for key — quantized weights stay quantized — and adds float32
``blk.L.ffn_down.bias`` tensors. Both write a temporary folder renamed into place: no partial
output on error. ``fold.json`` beside the weights records what was folded.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from tqdm.auto import tqdm

from . import models
from ._version import __version__
from .errors import FoldError, FoldUnsupportedError
from .generation import seeded_rng
from .steering import Steering
from .vectors import PersonaVector

SUMMARY_NAME = "fold.json"
FORMATS = ("hf", "gguf")


@dataclass(frozen=True)
class FoldSlot:
    """Where an architecture can hold a constant added after a decoder layer."""

    model_type: str
    config_flag: str  # the config option that gives the slot a bias
    biased: tuple[str, ...]  # every linear map (inside a decoder layer) the flag gives a bias
    target: str  # the one whose bias is the residual-stream constant
    gguf_arch: str  # llama.cpp's general.architecture
    gguf_tensor: str  # its name of the target bias, with {layer}


FOLD_SLOTS: dict[str, FoldSlot] = {
    "llama": FoldSlot("llama", "mlp_bias", ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"), "mlp.down_proj",
                      "llama", "blk.{layer}.ffn_down.bias"),
}

_POST_NORM = "normalizes each sublayer's output (post_feedforward_layernorm) before the residual add, so a bias " \
             "there is scaled by the norm, not a constant"
_NO_BIAS = "has no bias option on mlp.down_proj or self_attn.o_proj (the maps whose output joins the residual)"
NO_SLOT: dict[str, str] = {
    "gemma2": _POST_NORM, "gemma3": _POST_NORM, "gemma3_text": _POST_NORM, "olmo2": _POST_NORM,
    "mistral": _NO_BIAS, "qwen2": _NO_BIAS, "qwen3": _NO_BIAS, "phi3": _NO_BIAS, "gemma": _NO_BIAS,
}


def architecture_name(config) -> str:
    """``Gemma3ForCausalLM (model_type gemma3_text)``: how errors name an architecture."""
    archs = getattr(config, "architectures", None) or []
    return f"{archs[0] if archs else type(config).__name__} (model_type {config.model_type})"


def fold_slot(config) -> FoldSlot:
    """The fold slot of an HF config's architecture, or :class:`FoldUnsupportedError` naming it."""
    slot = FOLD_SLOTS.get(config.model_type)
    if slot is None:
        why = NO_SLOT.get(config.model_type, "is not among the architectures checked to have an exact slot")
        raise FoldUnsupportedError(
            f"cannot fold steering into the weights of {architecture_name(config)}: this architecture {why}. "
            f"Folding supports {', '.join(sorted(FOLD_SLOTS))}; steer at run time instead "
            "(persona-lens steer, or the vLLM / OpenAI-compatible server)")
    return slot


def fold_deltas(model, vector: PersonaVector | torch.Tensor, layers: int | Sequence[int],
                alpha: float) -> dict[int, torch.Tensor]:
    """``{layer: alpha * v[layer]}`` (float32), built by :meth:`Steering.from_vector` so the
    constant is exactly the one runtime steering adds."""
    layers = [layers] if isinstance(layers, int) else list(layers)
    if not layers:
        raise FoldError("give at least one layer to fold")
    if len(set(layers)) != len(layers):
        raise FoldError(f"layer listed twice in {layers}")
    for layer in layers:
        models.check_layer(model, layer)
    if isinstance(vector, PersonaVector):
        vector.check_model(model)
    return {int(k): v.to(torch.float32) for k, v in Steering.from_vector(vector, layers, alpha, "all").deltas.items()}


def _clean_state_dict(hf) -> dict[str, torch.Tensor]:
    # Inside a TransformerBridge the HF modules are wrapped: their weights sit under
    # "._original_component" (plus alias names the fresh model does not have).
    return {k.replace("._original_component", ""): v for k, v in hf.state_dict().items()}


def _layer_module(hf, layer: int, dotted: str) -> torch.nn.Module:
    module = hf.get_decoder().layers[layer]
    for part in dotted.split("."):
        module = getattr(module, part)
    return module


def fold_into_model(model, vector: PersonaVector | torch.Tensor, layers: int | Sequence[int], alpha: float) -> Any:
    """A plain transformers copy of ``model`` (a persona_lens model or an HF causal LM) whose
    weights add ``alpha * v[l]`` after each decoder layer ``l`` in ``layers``; ``model`` itself is
    untouched. Raises :class:`FoldUnsupportedError` for an architecture without an exact slot."""
    from transformers import AutoModelForCausalLM

    hf = models.hf_causal_lm(model)
    slot = fold_slot(hf.config)
    deltas = fold_deltas(model, vector, layers, alpha)
    config = hf.config.__class__.from_dict(hf.config.to_dict())
    setattr(config, slot.config_flag, True)
    weight = hf.get_input_embeddings().weight
    dtype, device = weight.dtype, weight.device
    # from_config initializes random weights (all overwritten below); forked RNG leaves the caller's as it was.
    with seeded_rng(0, device), torch.device(device):
        folded: Any = AutoModelForCausalLM.from_config(config, dtype=dtype)
    wanted = folded.state_dict()
    source = _clean_state_dict(hf)
    missing = [k for k in wanted if k not in source]
    new_biases = {f"model.layers.{i}.{name}.bias" for i in range(models.n_layers(model)) for name in slot.biased}
    unexplained = [k for k in missing if k not in new_biases and not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if unexplained:
        raise FoldError(f"cannot copy the weights of {architecture_name(hf.config)}: no source for {unexplained[:5]}")
    with torch.no_grad():
        folded.load_state_dict({k: source[k] for k in wanted if k in source}, strict=False)
        for key in missing:
            if key in new_biases:
                folded.get_parameter(key).zero_()
        folded.tie_weights()
        for layer, delta in deltas.items():
            bias: torch.Tensor = _layer_module(folded, layer, slot.target).get_parameter("bias")
            bias += delta.to(device=bias.device, dtype=bias.dtype)  # onto an existing bias: adds
    folded.generation_config = hf.generation_config
    return folded.eval()


# --------------------------------------------------------------------------- writing


@contextlib.contextmanager
def _staged(out: Path, overwrite: bool, summary: dict) -> Iterator[Path]:
    """A temporary folder beside ``out`` to write into; on success ``fold.json`` (``summary``) is
    added and the folder renamed to ``out``; on error it is removed (no partial output)."""
    if out.exists() and not (out.is_dir() and not any(out.iterdir())) and not overwrite:
        raise FoldError(f"{out} already exists: choose a new folder (or pass overwrite / --overwrite)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{secrets.token_hex(6)}.tmp"
    tmp.mkdir()
    try:
        yield tmp
        (tmp / SUMMARY_NAME).write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def save_folded(folded, tokenizer, out: str | os.PathLike, summary: dict, *, overwrite: bool = False) -> Path:
    """Write ``folded`` (from :func:`fold_into_model`) as a transformers folder ``out``: weights
    (safetensors), ``config.json``, generation config, tokenizer and ``fold.json`` (``summary``).
    Written to a temporary folder first and renamed: no partial folder on error."""
    out = Path(out)
    with _staged(out, overwrite, summary) as tmp:
        folded.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return out


def source_gguf(model) -> Path:
    """The GGUF file ``model`` was loaded from (the embedded models), or :class:`FoldError`."""
    key = getattr(model, "persona_lens_key", None)
    if key in models.EMBEDDED_MODELS:
        return models._embedded_gguf(models.EMBEDDED_MODELS[key])
    raise FoldError(
        f"model {models.model_id(model)!r} was not loaded from a GGUF file: pass its GGUF with gguf_source / "
        "--gguf-source (make one with llama.cpp's convert_hf_to_gguf.py), or fold with --format hf")


def _field_value(field) -> Any:
    return field.contents()


def fold_gguf(source: str | os.PathLike, out_file: str | os.PathLike, deltas: dict[int, torch.Tensor],
              slot: FoldSlot, *, progress: bool = True) -> Path:
    """Copy the GGUF ``source`` to ``out_file`` with ``deltas`` added to ``slot.gguf_tensor`` of
    each layer (a float32 tensor, created if absent). Every other tensor and key is copied byte
    for byte. ``out_file`` should lie in a staging folder (the caller renames it into place)."""
    reader = gguf.GGUFReader(source)
    arch_field = reader.get_field(gguf.Keys.General.ARCHITECTURE)
    arch = _field_value(arch_field) if arch_field is not None else None
    if arch != slot.gguf_arch:
        raise FoldUnsupportedError(f"{source}: GGUF architecture {arch!r}; folding into GGUF supports "
                                   f"{slot.gguf_arch!r} (llama.cpp's optional {slot.gguf_tensor})")
    n_embd = int(_field_value(reader.get_field(f"{arch}.embedding_length")))
    biases: dict[str, np.ndarray] = {}
    for layer, delta in deltas.items():
        if delta.shape != (n_embd,):
            raise FoldError(f"layer {layer}: steering of shape {tuple(delta.shape)} for a GGUF of width {n_embd}")
        biases[slot.gguf_tensor.format(layer=layer)] = delta.detach().cpu().numpy().astype(np.float32)
    tensors = {t.name: t for t in reader.tensors}
    writer = gguf.GGUFWriter(out_file, arch=arch, endianess=reader.endianess)
    alignment = reader.get_field(gguf.Keys.General.ALIGNMENT)
    if alignment is not None:
        writer.data_alignment = int(_field_value(alignment))
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue  # the writer writes these itself
        main = field.types[0]
        sub = field.types[-1] if main == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, _field_value(field), main, sub_type=sub)
    writer.add_string("persona_lens.fold", json.dumps({"tensors": sorted(biases), "persona_lens": __version__}))
    data: list[np.ndarray] = []
    for t in reader.tensors:
        if t.name in biases:  # an existing bias: the steering adds to it
            if t.tensor_type != gguf.GGMLQuantizationType.F32:
                raise FoldError(f"{source}: {t.name} is {t.tensor_type.name}, expected F32")
            values = np.asarray(t.data, dtype=np.float32).reshape(-1) + biases.pop(t.name)
            writer.add_tensor_info(t.name, values.shape, values.dtype, values.nbytes, gguf.GGMLQuantizationType.F32)
            data.append(values)
        else:
            writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
            data.append(t.data)
    for name, values in sorted(biases.items()):
        if name.replace(".bias", ".weight") not in tensors:
            raise FoldError(f"{source}: no {name.replace('.bias', '.weight')} to attach {name} to")
        writer.add_tensor_info(name, values.shape, values.dtype, values.nbytes, gguf.GGMLQuantizationType.F32)
        data.append(values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for values in tqdm(data, desc="write gguf", unit="tensor", disable=not progress, leave=False):
        writer.write_tensor_data(values, tensor_endianess=reader.endianess)
    writer.close()
    return Path(out_file)


def fold(model, vector: PersonaVector | torch.Tensor, layers: int | Sequence[int], alpha: float,
         out: str | os.PathLike, *, fmt: str = "hf", gguf_source: str | os.PathLike | None = None,
         overwrite: bool = False, progress: bool = True) -> dict:
    """Fold ``alpha * v[l]`` (each ``l`` in ``layers``) into ``model``'s weights and write the
    result to the folder ``out`` (``fmt`` ``hf``: a transformers checkpoint; ``gguf``: one
    ``.gguf`` file for llama.cpp). Returns the summary also written as ``out/fold.json``."""
    if fmt not in FORMATS:
        raise FoldError(f"unknown fold format {fmt!r}; choose from {FORMATS}")
    hf = models.hf_causal_lm(model)
    slot = fold_slot(hf.config)
    deltas = fold_deltas(model, vector, layers, alpha)
    summary: dict[str, Any] = {
        "format": fmt, "model_id": models.model_id(model), "architecture": architecture_name(hf.config),
        "layers": sorted(deltas), "alpha": float(alpha),
        "persona": vector.name if isinstance(vector, PersonaVector) else None,
        "vector_metadata": vector.metadata if isinstance(vector, PersonaVector) else None,
        "slot": f"{slot.target}.bias" if fmt == "hf" else slot.gguf_tensor,
        "delta_norms": {str(k): float(v.norm()) for k, v in sorted(deltas.items())},
        "equivalent_to": f"steering with positions='all' at layers {sorted(deltas)} and alpha {float(alpha):g}",
        "persona_lens": __version__,
    }
    out = Path(out)
    if fmt == "hf":
        folded = fold_into_model(model, vector, sorted(deltas), alpha)
        summary.update(dtype=str(models.model_dtype(folded)).removeprefix("torch."),
                       config_change={slot.config_flag: True},
                       load="AutoModelForCausalLM.from_pretrained(out)  # or vllm serve out")
        save_folded(folded, getattr(model, "tokenizer", None), out, summary, overwrite=overwrite)
        return summary
    source = Path(gguf_source) if gguf_source is not None else source_gguf(model)
    name = source.stem + ".folded.gguf"
    summary.update(source_gguf=str(source), file=name, load=f"llama-cli -m {out / name}")
    with _staged(out, overwrite, summary) as tmp:
        fold_gguf(source, tmp / name, deltas, slot, progress=progress)
    return summary
