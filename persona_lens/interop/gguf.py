"""Persona vectors as llama.cpp / Ollama GGUF control vectors.

``export_gguf(vector, path, alpha=1.0, layers=None)`` writes a file that
``llama-cli -m model.gguf --control-vector persona.gguf`` (and ``llama-server``, and Ollama's
llama.cpp runner) reads; ``load_gguf_control_vector(path)`` reads such a file back into a
:class:`~persona_lens.vectors.PersonaVector` (``persona_lens.interop.load_vector("x.gguf")`` dispatches here).

File layout (what llama.cpp's reader accepts)
---------------------------------------------
* ``general.architecture = "controlvector"``, ``controlvector.model_hint`` (str; we write the
  model id), ``controlvector.layer_count`` (uint32; the number of ``direction.N`` tensors, as
  repeng writes it). llama.cpp itself reads neither key; they identify the file.
* One 1-D **float32** tensor ``direction.N`` of length ``d_model`` per exported layer.
* ``persona_lens.metadata``: our vector metadata as JSON (ignored by llama.cpp), so an import
  restores the persona name, model id, layer count, and the ``alpha`` that was baked in.

Layer mapping (verified against llama.cpp's source, and by running llama.cpp)
-----------------------------------------------------------------------------
``scripts/verify_gguf_llamacpp.py`` runs llama.cpp's ``llama-eval-callback`` with and without
an exported one-layer vector and checks that ``l_out-L`` (and nothing before it) moves by
exactly the vector; it passed for layers 1, 10 and 29 of SmolLM2-135M on the llama.cpp
vendored in llama-cpp-python 0.3.36 (2026-11-23). ``tests/test_interop_gguf.py`` runs it
when ``$LLAMA_EVAL_CALLBACK`` points at the binary.

**persona_lens layer l  ==  ``direction.l``**, for ``1 <= l <= n_layers - 1``. Layer 0 has no slot.

persona_lens layer ``l`` is TransformerLens ``blocks.{l}.hook_resid_post``, the output of HF
decoder layer ``l`` (0-based), HF ``hidden_states[l + 1]``. In llama.cpp:

1. ``common/common.cpp``, ``common_control_vector_load_one``: a tensor named ``direction.N``
   is parsed to ``layer_idx = N``; ``N == 0`` is rejected ("invalid (zero) direction tensor
   layer index"); non-F32 and non-1-D tensors are rejected; the values (times the
   ``--control-vector-scaled`` strength, default 1) are *added* into
   ``data[n_embd * (N - 1) ...]`` ("layer 1 at [0]"), so several files/tensors for the same
   layer sum.
2. ``src/llama-adapter.cpp``, ``llama_adapter_cvec::apply``: for ``il = 1 .. n_layer - 1`` the
   per-layer tensor ``tensors[il]`` receives ``data + n_embd * (il - 1)``, i.e.
   ``tensors[il] = direction.il``; ``tensors[0]`` never exists ("there's never a tensor for
   layer 0"). ``apply_to(ctx, cur, il)`` does ``cur = ggml_add(cur, tensors[il])`` when
   ``layer_start <= il <= layer_end``.
3. The model graphs (``src/models/*.cpp``, e.g. llama) run ``for (il = 0; il < n_layer; ++il)``
   and at the end of each block do ``cur = ggml_add(cur, ffn_inp)`` (the residual add) then
   ``cur = build_cvec(cur, il)`` and name it ``"l_out"``: the vector is added to the output
   of 0-based block ``il``, the input of block ``il + 1`` — exactly ``hook_resid_post`` of
   layer ``il``.
4. ``common_init_from_params``: without ``--control-vector-layer-range`` the range is
   ``start = 1``, ``end = n_layer`` (inclusive), i.e. every exported direction is applied.

repeng (``vgel/repeng``, ``repeng/extract.py``) agrees: it reads ``hidden_states[layer + 1]``
for its layer ``layer``, writes ``direction.{layer}`` with that same number, and trains layers
``n_layers-1 .. 1`` (never 0). So a repeng control vector imports here row for row.

Scale: alpha is baked in
------------------------
llama.cpp adds the stored vector as is (times the optional load-time strength), at every
position of prompt and generation alike (persona_lens' ``positions="all"``). So the file holds
``alpha * v[l]``. ``export_gguf(v, path, alpha=2.0, layers=[20])`` then
``llama-cli --control-vector path`` steers like ``steer(model, v, 20, alpha=2.0, positions="all")``;
equivalently export with ``alpha=1`` and run ``--control-vector-scaled path 2.0``. Importing
returns the stored values (alpha included); the metadata key ``gguf_alpha`` records it.

Which layers: ``layers=None`` exports every layer that llama.cpp can hold (1..n_layers-1),
like repeng. A Persona Vectors vector is usually applied at *one* layer: pass ``layers=[l]``,
or export all and select at load time with ``--control-vector-layer-range l l``. Adding
``alpha * v`` at every layer at once is far stronger than single-layer steering.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable
from pathlib import Path

import gguf
import numpy as np
import torch

from ..errors import LayerOutOfRangeError, VectorFileError
from ..io import atomic_write
from ..vectors import PersonaVector, check_finite

ARCH = "controlvector"
METADATA_FIELD = "persona_lens.metadata"
TENSOR_PREFIX = "direction."


def _layers_to_export(vector: PersonaVector, layers: int | Iterable[int] | None) -> list[int]:
    n = vector.n_layers
    if layers is None:
        if bool(vector.vectors[0].abs().max() > 0):
            warnings.warn(
                "layer 0 of this vector is non-zero but a llama.cpp control vector has no slot for "
                "layer 0 (direction.0 is rejected); it is left out", stacklevel=3)
        return [l for l in range(1, n) if l not in vector.missing_layers]  # a missing layer has no direction
    chosen = sorted({int(layers)} if isinstance(layers, int) else {int(l) for l in layers})
    if not chosen:
        raise ValueError("layers is empty: nothing to export")
    for l in chosen:
        if not 0 <= l < n:
            raise LayerOutOfRangeError(f"layer {l} out of range for a vector with {n} layers")
        if l == 0:
            raise LayerOutOfRangeError(
                "layer 0 cannot be exported: llama.cpp control vectors start at direction.1 "
                "(the output of block 1); layer 0's output has no control-vector slot")
    return chosen


def export_gguf(
    vector: PersonaVector,
    path: str | os.PathLike,
    alpha: float = 1.0,
    layers: int | Iterable[int] | None = None,
    model_hint: str | None = None,
) -> Path:
    """Write ``alpha * vector[l]`` as ``direction.l`` for each exported layer (see module doc).

    ``layers``: an int, a list, or ``None`` for every layer 1..n_layers-1. ``model_hint``
    defaults to the vector's model id. Returns the path. The file is written atomically.
    """
    if not isinstance(vector, PersonaVector):
        raise TypeError(f"export_gguf needs a PersonaVector, got {type(vector).__name__}")
    alpha = float(alpha)
    check_finite(torch.tensor(alpha), "alpha")
    chosen = _layers_to_export(vector, layers)
    path = Path(path)
    hint = model_hint or vector.model_id or "unknown"
    md = {**vector.metadata, "gguf_alpha": alpha, "gguf_layers": chosen,
          "layer_convention": "direction.l = persona_lens layer l = blocks.{l}.hook_resid_post"}

    def write(tmp: str) -> None:
        writer = gguf.GGUFWriter(str(tmp), ARCH)
        writer.add_string(f"{ARCH}.model_hint", str(hint))
        writer.add_uint32(f"{ARCH}.layer_count", len(chosen))
        writer.add_string("general.name", vector.name)
        writer.add_string(METADATA_FIELD, json.dumps(md, default=str))
        for l in chosen:
            data = (alpha * vector.layer(l).double()).to(torch.float32).numpy()
            writer.add_tensor(f"{TENSOR_PREFIX}{l}", np.ascontiguousarray(data, dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    atomic_write(path, write)
    return path


def _field_str(reader, key: str) -> str | None:
    field = reader.get_field(key)
    if field is None or not len(field.parts):
        return None
    return bytes(field.parts[field.data[0]]).decode("utf-8", errors="replace")


def load_gguf_control_vector(path: str | os.PathLike, n_layers: int | None = None) -> PersonaVector:
    """Read a GGUF control vector (ours, repeng's, llama.cpp's cvector-generator's).

    Row ``l`` of the result is ``direction.l`` (module doc); rows without a tensor are zero.
    ``n_layers`` defaults to the layer count recorded by persona_lens, else the highest
    direction index + 1 (pass the model's layer count for foreign files that skip top layers).
    """
    path = Path(path)
    if not path.exists():
        raise VectorFileError(f"control vector file not found: {path}")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:
        raise VectorFileError(f"{path}: not a readable GGUF file ({exc})") from exc
    arch = _field_str(reader, "general.architecture")
    if arch is not None and arch != ARCH:
        raise VectorFileError(f"{path}: general.architecture is {arch!r}, not {ARCH!r}: not a control vector")
    md: dict = {}
    raw = _field_str(reader, METADATA_FIELD)
    if raw:
        try:
            md = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise VectorFileError(f"{path}: {METADATA_FIELD} is not JSON ({exc})") from None
    directions: dict[int, np.ndarray] = {}
    for tensor in reader.tensors:
        name = tensor.name
        if not name.startswith(TENSOR_PREFIX):
            continue
        try:
            layer = int(name[len(TENSOR_PREFIX):])
        except ValueError:
            raise VectorFileError(f"{path}: unparsable direction tensor name {name!r}") from None
        if layer <= 0:
            raise VectorFileError(f"{path}: {name!r}: llama.cpp rejects layer index {layer} (must be >= 1)")
        if tensor.tensor_type != gguf.GGMLQuantizationType.F32:
            raise VectorFileError(f"{path}: {name!r} is {tensor.tensor_type.name}, llama.cpp needs F32")
        data = np.asarray(tensor.data, dtype=np.float32).reshape(-1)
        # Same-layer tensors add, as in llama.cpp's loader.
        directions[layer] = directions[layer] + data if layer in directions else data.copy()
    if not directions:
        raise VectorFileError(f"{path}: no direction.N tensors")
    widths = {d.shape[0] for d in directions.values()}
    if len(widths) != 1:
        raise VectorFileError(f"{path}: direction tensors have different widths {sorted(widths)}")
    width = widths.pop()
    top = max(directions)
    if n_layers is None:
        n_layers = int(md.get("n_layers") or top + 1)
    if top >= n_layers:
        raise VectorFileError(f"{path}: direction.{top} does not fit a {n_layers}-layer vector")
    vectors = torch.zeros(n_layers, width, dtype=torch.float32)
    for layer, data in directions.items():
        vectors[layer] = torch.from_numpy(data)
    if not md:
        hint = _field_str(reader, f"{ARCH}.model_hint")
        md = {"persona": _field_str(reader, "general.name") or path.stem, "source": "gguf_control_vector",
              "model_hint": hint, "gguf_layers": sorted(directions)}
    # rows of layers missing from the exported vector stay missing (NaN), not zero
    md = {k: v for k, v in md.items() if k not in ("n_layers", "d_model")}
    md.setdefault("gguf_alpha", None)
    md["source_file"] = str(path)
    return PersonaVector(vectors, md)
