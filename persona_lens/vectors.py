"""PersonaVector: one direction per layer, plus metadata, and its file formats.

File contract (read by other tools and by our own checks):
    ``.safetensors`` with one float32 tensor ``vectors`` of shape ``[n_layers, d_model]``;
    row l <-> ``blocks.{l}.hook_resid_post`` <-> HF ``hidden_states[l+1]``; optionally
    ``embed_diff`` and ``final_norm_diff`` (``[d_model]``): the direction at the embedding output
    (HF ``hidden_states[0]``) and at the final-norm output (HF ``hidden_states[n_layers]``);
    the safetensors header metadata key ``persona_lens`` holds the metadata as a JSON string.
    A layer listed in metadata ``missing_layers`` is not held (its row is NaN).

Persona Vectors' ``.pt`` layout is ``[n_layers + 1, d_model]`` = HF ``hidden_states`` rows:
row 0 = embeddings, row k = ``hidden_states[k]`` = our layer ``k - 1`` for ``1 <= k < n_layers``,
row ``n_layers`` = after the final norm. ``to_pt`` writes ``embed_diff``, layers ``0..n-2`` and
``final_norm_diff`` (our pre-norm last layer has no row there); ``from_pt`` maps back, and the
imported vector does not hold layer ``n - 1`` (``MissingLayerError`` when it is used).
GGUF control vectors: :mod:`persona_lens.interop.gguf`.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from jaxtyping import Float
from safetensors import safe_open
from torch import Tensor

from ._version import __version__
from .errors import (
    LayerOutOfRangeError,
    MissingLayerError,
    ModelMismatchError,
    NonFiniteError,
    VectorFileError,
    VectorShapeError,
)
from .io import atomic_write
from .models import d_model, n_layers

METADATA_KEY = "persona_lens"
TENSOR_KEY = "vectors"
EXTRA_KEYS = ("embed_diff", "final_norm_diff")  # optional safetensors tensors, [d_model] each
PT_MISSING_ROWS = ("error", "zeros")


def check_finite(t: Tensor, what: str) -> Tensor:
    if not torch.isfinite(t).all():
        bad = (~torch.isfinite(t)).nonzero()
        raise NonFiniteError(f"{what} holds NaN/inf (first at index {tuple(bad[0].tolist())})")
    return t


@dataclass
class PersonaVector:
    """``vectors[l]`` is the persona direction at ``blocks.{l}.hook_resid_post``.

    ``embed_diff`` / ``final_norm_diff``: the same direction at the embedding output and at the
    final-norm output (``None`` when not extracted); the rows 0 and ``n_layers`` of a Persona
    Vectors ``.pt`` file. Layers in ``metadata["missing_layers"]`` are not held (NaN rows).
    """

    vectors: Float[Tensor, "n_layers d_model"]
    metadata: dict[str, Any] = field(default_factory=dict)
    embed_diff: Float[Tensor, " d_model"] | None = None
    final_norm_diff: Float[Tensor, " d_model"] | None = None

    def __post_init__(self) -> None:
        v = torch.as_tensor(self.vectors)
        if v.ndim != 2:
            raise VectorShapeError(f"vectors must be [n_layers, d_model], got shape {tuple(v.shape)}")
        v = v.detach().to(torch.float32).cpu().contiguous()
        md = dict(self.metadata)
        missing = sorted({int(l) for l in md.get("missing_layers") or ()})
        if any(not 0 <= l < v.shape[0] for l in missing):
            raise VectorShapeError(f"missing_layers {missing} out of range for {v.shape[0]} layers")
        held = [l for l in range(v.shape[0]) if l not in missing]
        check_finite(v[held], "persona vector")  # index = position among the held rows
        v[missing] = float("nan")
        self.vectors = v
        for name in EXTRA_KEYS:
            t = getattr(self, name)
            if t is not None:
                t = torch.as_tensor(t).detach().to(torch.float32).cpu().reshape(-1).contiguous()
                if t.shape[0] != v.shape[1]:
                    raise VectorShapeError(f"{name} has width {t.shape[0]} but the vectors have {v.shape[1]}")
                setattr(self, name, check_finite(t, name))
        md.setdefault("hook", "resid_post")
        md.setdefault("package_version", __version__)
        md.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        md["n_layers"], md["d_model"] = self.n_layers, self.d_model
        if missing:
            md["missing_layers"] = missing
        else:
            md.pop("missing_layers", None)
        self.metadata = md

    # ------------------------------------------------------------------ basics
    @property
    def n_layers(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def d_model(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def name(self) -> str:
        return str(self.metadata.get("persona", "persona"))

    @property
    def model_id(self) -> str | None:
        return self.metadata.get("model_id")

    @property
    def missing_layers(self) -> list[int]:
        return list(self.metadata.get("missing_layers", []))

    def layer(self, layer: int) -> Float[Tensor, " d_model"]:
        if not 0 <= layer < self.n_layers:
            raise LayerOutOfRangeError(f"layer {layer} out of range for a vector with {self.n_layers} layers")
        if layer in self.missing_layers:
            raise MissingLayerError(
                f"layer {layer} is not held by {self.name!r} ({self.metadata.get('source', 'missing_layers')}): "
                "a Persona Vectors .pt file has no row for the last block's pre-norm output (its last row "
                "is after the final norm, kept as final_norm_diff); use another layer")
        return self.vectors[layer]

    def unit(self, layer: int) -> Float[Tensor, " d_model"]:
        v = self.layer(layer)
        return v / v.norm().clamp_min(1e-12)

    def norms(self) -> Float[Tensor, " n_layers"]:
        """Per-layer norms (NaN for missing layers)."""
        return self.vectors.norm(dim=-1)

    def normalized(self) -> PersonaVector:
        def unit(t: Tensor | None) -> Tensor | None:
            return None if t is None else t / t.norm().clamp_min(1e-12)

        return PersonaVector(self.vectors / self.norms().clamp_min(1e-12)[:, None],
                             {**self.metadata, "normalized": True},
                             unit(self.embed_diff), unit(self.final_norm_diff))

    def check_model(self, model) -> PersonaVector:
        """Raise a named error unless this vector fits ``model`` (width and layer count)."""
        if self.d_model != d_model(model):
            raise VectorShapeError(
                f"vector width {self.d_model} does not match the model's d_model {d_model(model)}")
        if self.n_layers != n_layers(model):
            raise VectorShapeError(
                f"vector has {self.n_layers} layers but the model has {n_layers(model)}")
        return self

    # ------------------------------------------------------------------ arithmetic
    def _other(self, other: PersonaVector):
        if not isinstance(other, PersonaVector):
            return NotImplemented
        check_compatible([self, other])
        return other

    def _derived(self, op: str, combine, other: PersonaVector | float) -> PersonaVector:
        """``combine(a, b)`` applied to the vectors and to each extra row both sides hold."""
        parts = [self.name] + ([other.name] if isinstance(other, PersonaVector) else [])
        md = {k: v for k, v in self.metadata.items() if k in ("model_id", "hook", "positions")}
        suffix = f", {other}" if isinstance(other, (int, float)) else ""
        md.update(method=op, persona=f"{op}({', '.join(parts)}{suffix})", components=[{"persona": p} for p in parts])
        md["missing_layers"] = sorted(set(self.missing_layers) | set(getattr(other, "missing_layers", [])))

        def side(name: str) -> Tensor | None:
            mine = getattr(self, name)
            if not isinstance(other, PersonaVector):
                return None if mine is None else combine(mine, other)
            theirs = getattr(other, name)
            return None if mine is None or theirs is None else combine(mine, theirs)

        vectors = combine(self.vectors, other.vectors if isinstance(other, PersonaVector) else other)
        return PersonaVector(vectors, md, side("embed_diff"), side("final_norm_diff"))

    def __add__(self, other):
        o = self._other(other)
        return o if o is NotImplemented else self._derived("add", torch.add, o)

    def __sub__(self, other):
        o = self._other(other)
        return o if o is NotImplemented else self._derived("sub", torch.sub, o)

    def __mul__(self, scalar):
        if not isinstance(scalar, (int, float)) or isinstance(scalar, bool):
            return NotImplemented
        if not math.isfinite(scalar):
            raise NonFiniteError(f"cannot scale a persona vector by {scalar}")
        return self._derived("scale", lambda t, s: t * float(s), scalar)

    __rmul__ = __mul__

    def __neg__(self):
        return self * -1.0

    def __truediv__(self, scalar):
        if not isinstance(scalar, (int, float)) or scalar == 0:
            return NotImplemented
        return self * (1.0 / scalar)

    def __repr__(self) -> str:
        return (f"PersonaVector(persona={self.name!r}, model={self.model_id!r}, n_layers={self.n_layers}, "
                f"d_model={self.d_model}, method={self.metadata.get('method')!r})")

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        tensors = {TENSOR_KEY: self.vectors}
        tensors.update({k: getattr(self, k) for k in EXTRA_KEYS if getattr(self, k) is not None})
        atomic_write(path, lambda tmp: safetensors.torch.save_file(tensors, str(tmp),
                                            metadata={METADATA_KEY: json.dumps(self.metadata, default=str)}))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> PersonaVector:
        """A ``.safetensors`` vector file, or a Persona Vectors ``.pt`` file (by suffix).
        GGUF files: :func:`persona_lens.interop.load_vector`."""
        path = Path(path)
        if not path.exists():
            raise VectorFileError(f"vector file not found: {path}")
        if path.suffix == ".pt":
            return cls.from_pt(path)
        if path.suffix == ".gguf":
            raise VectorFileError(f"{path}: read GGUF control vectors with persona_lens.interop.load_vector")
        try:
            with safe_open(str(path), framework="pt") as fh:
                header = fh.metadata() or {}
                keys = set(fh.keys())
                if TENSOR_KEY not in keys:
                    raise VectorFileError(f"{path}: no tensor named {TENSOR_KEY!r} (found {sorted(keys)})")
                vectors = fh.get_tensor(TENSOR_KEY)
                extras = {k: fh.get_tensor(k) for k in EXTRA_KEYS if k in keys}
        except VectorFileError:
            raise
        except Exception as exc:
            raise VectorFileError(f"{path}: not a readable safetensors file ({exc})") from exc
        try:
            metadata = json.loads(header.get(METADATA_KEY, "{}"))
        except json.JSONDecodeError as exc:
            raise VectorFileError(f"{path}: metadata key {METADATA_KEY!r} is not JSON ({exc})") from None
        return cls(vectors, metadata, **extras)

    def pt_rows(self, missing_rows: str = "error") -> Float[Tensor, "n_layers_plus_1 d_model"]:
        """The Persona Vectors ``[n_layers + 1, d_model]`` tensor (module doc).

        ``missing_rows="error"`` (default) raises :class:`MissingLayerError` when the vector
        lacks ``embed_diff`` / ``final_norm_diff`` (or layers ``0..n-2``); ``"zeros"`` writes
        zeros in those rows instead (no direction there, never another layer's).
        """
        if missing_rows not in PT_MISSING_ROWS:
            raise ValueError(f"missing_rows must be one of {PT_MISSING_ROWS}, got {missing_rows!r}")
        zeros = torch.zeros(self.d_model)
        body = self.vectors[: self.n_layers - 1].clone()
        rows = {"row 0 (embeddings, embed_diff)": self.embed_diff,
                f"row {self.n_layers} (after the final norm, final_norm_diff)": self.final_norm_diff}
        absent = [what for what, t in rows.items() if t is None]
        absent += [f"row {l + 1} (layer {l})" for l in self.missing_layers if l < self.n_layers - 1]
        if absent and missing_rows == "error":
            raise MissingLayerError(
                f"{self.name!r} has no data for {', '.join(absent)} of a Persona Vectors .pt file: re-extract "
                "it (extract() records both rows), or pass missing_rows='zeros' to write zeros there")
        body[body.isnan().any(dim=1)] = 0.0
        first = self.embed_diff if self.embed_diff is not None else zeros
        last = self.final_norm_diff if self.final_norm_diff is not None else zeros
        return torch.cat([first[None], body, last[None]])

    def to_pt(self, path: str | os.PathLike, missing_rows: str = "error") -> Path:
        """Write the Persona Vectors ``.pt`` layout (:meth:`pt_rows`); atomic."""
        path = Path(path)
        full = self.pt_rows(missing_rows)
        atomic_write(path, lambda tmp: torch.save(full, str(tmp)))
        return path

    @classmethod
    def from_pt(cls, path: str | os.PathLike, **metadata: Any) -> PersonaVector:
        """Read a Persona Vectors ``.pt`` file: row 0 -> ``embed_diff``, rows ``1..n-1`` -> layers
        ``0..n-2``, row ``n`` -> ``final_norm_diff``; layer ``n-1`` is missing (module doc)."""
        path = Path(path)
        try:
            data = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise VectorFileError(f"{path}: not a readable torch file ({exc})") from exc
        if isinstance(data, dict):
            tensors = [v for v in data.values() if isinstance(v, Tensor)]
            if len(tensors) != 1:
                raise VectorFileError(f"{path}: expected one tensor, found keys {list(data)}")
            data = tensors[0]
        if not isinstance(data, Tensor) or data.ndim != 2 or data.shape[0] < 3:
            raise VectorFileError(
                f"{path}: expected a [n_layers + 1, d_model] tensor (row 0 = embeddings, last row = after "
                f"the final norm), got {getattr(data, 'shape', type(data))}")
        data = data.to(torch.float32)
        n = data.shape[0] - 1
        vectors = torch.cat([data[1:n], torch.full((1, data.shape[1]), float("nan"))])
        md = {"persona": path.stem.split("_response_avg_diff")[0], "method": "mean_diff",
              "source": "persona_vectors_pt", **metadata, "missing_layers": [n - 1]}
        return cls(vectors, md, embed_diff=data[0], final_norm_diff=data[n])


def check_compatible(vectors: list[PersonaVector]) -> None:
    """Same width, same layer count, and (when recorded) the same model."""
    if not vectors:
        raise ValueError("no vectors given")
    first = vectors[0]
    for v in vectors[1:]:
        if v.vectors.shape != first.vectors.shape:
            raise VectorShapeError(
                f"{v.name!r} has shape {tuple(v.vectors.shape)} but {first.name!r} has {tuple(first.vectors.shape)}")
        if first.model_id and v.model_id and first.model_id != v.model_id:
            raise ModelMismatchError(
                f"{v.name!r} comes from model {v.model_id!r} but {first.name!r} from {first.model_id!r}")
