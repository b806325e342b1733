"""PersonaVector: one direction per layer, plus metadata, and its file formats.

File contract (read by other tools and by our own checks):
    ``.safetensors`` with one float32 tensor ``vectors`` of shape ``[n_layers, d_model]``;
    row l <-> ``blocks.{l}.hook_resid_post`` <-> HF ``hidden_states[l+1]``;
    the safetensors header metadata key ``persona_lens`` holds the metadata as a JSON string.
Persona Vectors' ``.pt`` layout is ``[n_layers + 1, d_model]`` with row 0 = embeddings
(``hidden_states[0]``); ``to_pt``/``from_pt`` convert (the embedding row is written as zeros:
no method here defines a direction on the embeddings).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from ._version import __version__
from .io import atomic_write
from .errors import LayerOutOfRangeError, ModelMismatchError, NonFiniteError, VectorFileError, VectorShapeError

METADATA_KEY = "persona_lens"
TENSOR_KEY = "vectors"


def check_finite(t: Tensor, what: str) -> Tensor:
    if not torch.isfinite(t).all():
        bad = (~torch.isfinite(t)).nonzero()
        raise NonFiniteError(f"{what} holds NaN/inf (first at index {tuple(bad[0].tolist())})")
    return t


@dataclass
class PersonaVector:
    """``vectors[l]`` is the persona direction at ``blocks.{l}.hook_resid_post``."""

    vectors: Float[Tensor, "n_layers d_model"]
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        v = torch.as_tensor(self.vectors)
        if v.ndim != 2:
            raise VectorShapeError(f"vectors must be [n_layers, d_model], got shape {tuple(v.shape)}")
        self.vectors = check_finite(v.detach().to(torch.float32).cpu().contiguous(), "persona vector")
        md = dict(self.metadata)
        md.setdefault("hook", "resid_post")
        md.setdefault("package_version", __version__)
        md.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        md["n_layers"], md["d_model"] = self.n_layers, self.d_model
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

    def layer(self, layer: int) -> Float[Tensor, " d_model"]:
        if not 0 <= layer < self.n_layers:
            raise LayerOutOfRangeError(f"layer {layer} out of range for a vector with {self.n_layers} layers")
        return self.vectors[layer]

    def unit(self, layer: int) -> Float[Tensor, " d_model"]:
        v = self.layer(layer)
        return v / v.norm().clamp_min(1e-12)

    def norms(self) -> Float[Tensor, " n_layers"]:
        return self.vectors.norm(dim=-1)

    def normalized(self) -> "PersonaVector":
        return PersonaVector(self.vectors / self.norms().clamp_min(1e-12)[:, None],
                             {**self.metadata, "normalized": True})

    def check_model(self, model) -> "PersonaVector":
        """Raise a named error unless this vector fits ``model`` (width and layer count)."""
        from .models import d_model, n_layers

        if self.d_model != d_model(model):
            raise VectorShapeError(
                f"vector width {self.d_model} does not match the model's d_model {d_model(model)}")
        if self.n_layers != n_layers(model):
            raise VectorShapeError(
                f"vector has {self.n_layers} layers but the model has {n_layers(model)}")
        return self

    # ------------------------------------------------------------------ arithmetic
    def _other(self, other: "PersonaVector") -> Tensor:
        if not isinstance(other, PersonaVector):
            return NotImplemented
        check_compatible([self, other])
        return other.vectors

    def _derived(self, vectors: Tensor, op: str, other: "PersonaVector | float | None" = None) -> "PersonaVector":
        parts = [self.name] + ([other.name] if isinstance(other, PersonaVector) else [])
        md = {k: v for k, v in self.metadata.items() if k in ("model_id", "hook", "positions")}
        md.update(method=op, persona=f"{op}({', '.join(parts)}{'' if not isinstance(other, (int, float)) else f', {other}'})",
                  components=[{"persona": p} for p in parts])
        return PersonaVector(vectors, md)

    def __add__(self, other):
        o = self._other(other)
        return o if o is NotImplemented else self._derived(self.vectors + o, "add", other)

    def __sub__(self, other):
        o = self._other(other)
        return o if o is NotImplemented else self._derived(self.vectors - o, "sub", other)

    def __mul__(self, scalar):
        if not isinstance(scalar, (int, float)) or isinstance(scalar, bool):
            return NotImplemented
        if not math.isfinite(scalar):
            raise NonFiniteError(f"cannot scale a persona vector by {scalar}")
        return self._derived(self.vectors * float(scalar), "scale", scalar)

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
        from safetensors.torch import save_file

        path = Path(path)
        atomic_write(path, lambda tmp: save_file({TENSOR_KEY: self.vectors}, str(tmp),
                                            metadata={METADATA_KEY: json.dumps(self.metadata, default=str)}))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PersonaVector":
        path = Path(path)
        if not path.exists():
            raise VectorFileError(f"vector file not found: {path}")
        if path.suffix == ".pt":
            return cls.from_pt(path)
        if path.suffix == ".gguf":
            from .interop.gguf import load_gguf_control_vector

            return load_gguf_control_vector(path)
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as fh:
                header = fh.metadata() or {}
                if TENSOR_KEY not in fh.keys():
                    raise VectorFileError(f"{path}: no tensor named {TENSOR_KEY!r} (found {list(fh.keys())})")
                vectors = fh.get_tensor(TENSOR_KEY)
        except VectorFileError:
            raise
        except Exception as exc:
            raise VectorFileError(f"{path}: not a readable safetensors file ({exc})") from exc
        try:
            metadata = json.loads(header.get(METADATA_KEY, "{}"))
        except json.JSONDecodeError as exc:
            raise VectorFileError(f"{path}: metadata key {METADATA_KEY!r} is not JSON ({exc})") from None
        return cls(vectors, metadata)

    def to_pt(self, path: str | os.PathLike) -> Path:
        """Persona Vectors layout: ``[n_layers + 1, d_model]``, row 0 = embeddings (zeros)."""
        path = Path(path)
        full = torch.cat([torch.zeros(1, self.d_model), self.vectors], dim=0)
        atomic_write(path, lambda tmp: torch.save(full, str(tmp)))
        return path

    @classmethod
    def from_pt(cls, path: str | os.PathLike, **metadata: Any) -> "PersonaVector":
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
        if not isinstance(data, Tensor) or data.ndim != 2 or data.shape[0] < 2:
            raise VectorFileError(
                f"{path}: expected a [n_layers + 1, d_model] tensor (row 0 = embeddings), got "
                f"{getattr(data, 'shape', type(data))}")
        md = {"persona": path.stem.split("_response_avg_diff")[0], "method": "mean_diff",
              "source": "persona_vectors_pt", **metadata}
        return cls(data[1:], md)


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
