"""Fingerprints: short content hashes of what decides a result (model weights, settings, prompts).

* :func:`content_hash` - sha256 of the canonical JSON of any JSON-able value, shortened.
* :func:`model_fingerprint` - the model id, its config and a strided sample of every parameter
  tensor: two checkpoints under the same name (a fine-tune saved over a folder, another dtype)
  get different fingerprints. Computed once per model object and cached on it; the cache is
  dropped when torch's version counters show a parameter was replaced or edited in place.
* :func:`tensors_fingerprint` - the same sampling for steering deltas and other tensors.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterable
from typing import Any

import torch

from ..models import hf_causal_lm, model_id

#: Hex characters kept from sha256: 64 bits, collision-free for any realistic number of runs.
HASH_CHARS = 16
#: Elements sampled per tensor (evenly strided over the flattened tensor).
SAMPLES_PER_TENSOR = 1024
_ATTR = "_persona_lens_fingerprint"
_lock = threading.Lock()
# Config entries that say where or with what a checkpoint was loaded, not what it computes.
_CONFIG_NOISE = ("_name_or_path", "transformers_version", "_commit_hash")


def canonical_json(obj: Any) -> str:
    """Key-sorted compact JSON; tuples as lists; anything else non-JSON is a ``TypeError``."""
    return json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def content_hash(obj: Any, chars: int = HASH_CHARS) -> str:
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()[:chars]


def tensors_fingerprint(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    """Names, shapes, dtypes and a strided sample of the values (as float32 bytes) of each tensor."""
    h = hashlib.sha256()
    samples = []
    for name, t in named:
        t = t.detach()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}\n".encode())
        flat = t.reshape(-1)
        step = max(1, flat.numel() // SAMPLES_PER_TENSOR)
        samples.append(flat[::step][:SAMPLES_PER_TENSOR].float())
    if samples:  # one device-to-host copy for all tensors
        h.update(torch.cat([s.to(samples[0].device) for s in samples]).cpu().numpy().tobytes())
    return h.hexdigest()[:HASH_CHARS]


def _weights_state(hf) -> tuple:
    """Changes whenever a parameter is replaced or modified in place (torch's version counter:
    ``load_state_dict``, ``p.add_`` under no_grad...), at the cost of a walk over the parameters."""
    return tuple((p.data_ptr(), p._version) for p in hf.parameters())


def model_fingerprint(model) -> str:
    """``<model id>@<hash>``: id + config + sampled weights. Cached on the model object and
    recomputed only when a parameter was replaced or changed in place since."""
    hf = hf_causal_lm(model)
    state = _weights_state(hf)
    cached = getattr(model, _ATTR, None)
    if cached is not None and cached[0] == state:
        return cached[1]
    with _lock:
        hf_config: Any = hf.config
        config = {k: v for k, v in hf_config.to_dict().items() if k not in _CONFIG_NOISE}
        with torch.no_grad():
            weights = tensors_fingerprint(hf.named_parameters())
        fp = f"{model_id(model)}@{content_hash([json.dumps(config, sort_keys=True, default=str), weights])}"
        setattr(model, _ATTR, (state, fp))
    return fp


def steering_fingerprint(steering) -> str | None:
    """What a :class:`persona_lens.steering.Steering` adds where: its positions and each layer's
    delta (sampled values); None without steering."""
    if steering is None:
        return None
    deltas = sorted(steering.deltas.items())
    fp = f"{steering.positions}:{tensors_fingerprint((str(layer), d) for layer, d in deltas)}"
    if steering.units:  # ablate/cap projections (an add-only steering keeps its fingerprint)
        fp += ":" + tensors_fingerprint(part for layer in sorted(steering.units) for part in (
            (f"unit{layer}", steering.units[layer]), (f"bounds{layer}", steering.bounds[layer])))
    return fp
