"""What a benchmark measures, from its command line: arguments, the model, its plain-HF baseline.

* command-line arguments every benchmark takes (``add_common_args``): ``--model`` (an embedded
  name, HF id or local path) or ``--shape`` (random weights of a named architecture, no
  download), ``--n-layers`` (shrink a shape's depth), ``--device``, ``--dtype``,
  ``--repeats``, ``--warmup``, ``--seed``, ``--threads``; ``benchmark_parser``: a script's parser
  (its docstring's first paragraph, the common arguments, ``--baseline separate|native``);
  ``setup``: threads, seeds, device and dtype from them;
* ``SHAPES``: HF config dicts of real models (``qwen2.5-7b``, ``llama-3.1-8b``, ``gemma-3-4b``,
  and the small ``smollm2-135m``/``gemma-3-270m`` for smoke runs), instantiated with random
  weights by ``persona_lens.testing.random_causal_lm`` — the throughput of a shape does not
  depend on its weights; ``--shape tiny`` is ``persona_lens.testing.tiny_model`` (a 3-layer
  random Llama with a byte-level tokenizer: starts in a second, needs no embedded model);
* ``load_subject``: a persona_lens ``TransformerBridge`` (a :class:`Subject`) for ``--model`` or
  ``--shape``; ``load_with_baseline``: the subject and its plain-HF baseline model for
  ``--baseline``; ``baseline_hf``: the HF model a baseline runs.

Random-shape models use the embedded SmolLM2 tokenizer (49,152 ids, fewer than every shape's
vocabulary, so every prompt id is valid; generated ids beyond it decode to nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

# Make `persona_lens` importable when a script runs from a source checkout without installing.
_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from _measure import log  # noqa: E402

from persona_lens import testing  # noqa: E402
from persona_lens.models import default_device, from_hf, load_model, n_layers, resolve_model_name  # noqa: E402
from persona_lens.native import native  # noqa: E402

# --------------------------------------------------------------------------- named shapes

# Text-model configs as published in each model's config.json (rope scaling included; fields a
# given transformers version does not know are ignored or converted by it).
SHAPES: dict[str, dict[str, Any]] = {
    "qwen2.5-7b": dict(
        model_type="qwen2", architectures=["Qwen2ForCausalLM"],
        hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
        num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
        max_position_embeddings=32768, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
        hidden_act="silu", tie_word_embeddings=False, use_sliding_window=False,
        bos_token_id=151643, eos_token_id=151643,
    ),
    "llama-3.1-8b": dict(
        model_type="llama", architectures=["LlamaForCausalLM"],
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
        max_position_embeddings=131072, rope_theta=500_000.0, rms_norm_eps=1e-5,
        hidden_act="silu", tie_word_embeddings=False, mlp_bias=False, attention_bias=False,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        bos_token_id=128000, eos_token_id=128001,
    ),
    "gemma-3-4b": dict(  # the text tower of google/gemma-3-4b-it
        model_type="gemma3_text", architectures=["Gemma3ForCausalLM"],
        hidden_size=2560, intermediate_size=10240, num_hidden_layers=34,
        num_attention_heads=8, num_key_value_heads=4, head_dim=256, vocab_size=262208,
        max_position_embeddings=131072, rope_theta=1_000_000.0, rope_local_base_freq=10_000.0,
        rope_scaling={"rope_type": "linear", "factor": 8.0}, sliding_window=1024,
        query_pre_attn_scalar=256, rms_norm_eps=1e-6, hidden_activation="gelu_pytorch_tanh",
        final_logit_softcapping=None, attn_logit_softcapping=None, tie_word_embeddings=True,
        bos_token_id=2, eos_token_id=1, pad_token_id=0,
    ),
    "smollm2-135m": dict(
        model_type="llama", architectures=["LlamaForCausalLM"],
        hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
        max_position_embeddings=8192, rope_theta=100_000.0, rms_norm_eps=1e-5,
        hidden_act="silu", tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
    ),
    "gemma-3-270m": dict(
        model_type="gemma3_text", architectures=["Gemma3ForCausalLM"],
        hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
        num_attention_heads=4, num_key_value_heads=1, head_dim=256, vocab_size=262144,
        max_position_embeddings=32768, rope_theta=1_000_000.0, rope_local_base_freq=10_000.0,
        sliding_window=512, query_pre_attn_scalar=256, rms_norm_eps=1e-6,
        hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True,
        bos_token_id=2, eos_token_id=1, pad_token_id=0,
    ),
}


def shape_config(shape: str, n_layers: int | None = None):
    """A transformers config for a named shape (no download); ``n_layers`` shrinks the depth."""
    from transformers import AutoConfig

    if shape not in SHAPES:
        raise SystemExit(f"unknown --shape {shape!r}; choose from {', '.join(SHAPES)}")
    fields = dict(SHAPES[shape])
    model_type = fields.pop("model_type")
    if n_layers is not None:
        fields["num_hidden_layers"] = n_layers
    config = AutoConfig.for_model(model_type, **fields)
    if getattr(config, "layer_types", None) is not None and len(config.layer_types) != config.num_hidden_layers:
        config.layer_types = config.layer_types[: config.num_hidden_layers]
    return config


TINY = "tiny"  # persona_lens.testing.tiny_model, not a config in SHAPES


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- arguments


def add_common_args(parser: argparse.ArgumentParser, *, default_repeats: int = 5) -> argparse.ArgumentParser:
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--model", default=None,
                     help="embedded name (default, gemma-3-270m), HF id or local path (default: 'default')")
    src.add_argument("--shape", default=None, choices=[*sorted(SHAPES), TINY],
                     help="random weights of a named architecture instead of a real model (no download); "
                          "tiny: a 3-layer random Llama, for smoke runs")
    parser.add_argument("--n-layers", type=int, default=None,
                        help="with --shape: build only this many decoder layers (e.g. to fit a CPU)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: best available)")
    parser.add_argument("--dtype", default=None,
                        help="float32, bfloat16, float16 (default: float32 on CPU, bfloat16 otherwise)")
    parser.add_argument("--repeats", type=int, default=default_repeats, help="timed runs per variant (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per variant first")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    return parser


BASELINES = ("separate", "native")


def benchmark_parser(doc: str, *, default_repeats: int = 5, baseline: bool = True) -> argparse.ArgumentParser:
    """A script's parser: described by the first paragraph of ``doc`` (its module docstring),
    with :func:`add_common_args` and, with ``baseline``, ``--baseline separate|native`` (see
    :meth:`Subject.plain_hf_baseline`)."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, default_repeats=default_repeats)
    if baseline:
        p.add_argument("--baseline", default="separate", choices=list(BASELINES))
    return p


def resolve_device(name: str | None) -> str:
    return name or default_device()


def resolve_dtype(name: str | None, device: str) -> torch.dtype:
    if name:
        dtype = getattr(torch, name, None)
        if not isinstance(dtype, torch.dtype):
            raise SystemExit(f"unknown --dtype {name!r}")
        return dtype
    return torch.float32 if device == "cpu" else torch.bfloat16


def setup(args) -> tuple[str, torch.dtype]:
    if args.threads:
        torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = resolve_device(args.device)
    return device, resolve_dtype(args.dtype, device)


# --------------------------------------------------------------------------- models


@dataclass
class Subject:
    """What a benchmark measures: a persona_lens bridge and how it was made."""

    bridge: Any
    tokenizer: Any
    label: str  # "default", "shape:qwen2.5-7b[2 layers]", ...
    info: dict = field(default_factory=dict)
    _baseline_source: Any = None  # folder (for --model) or a pristine HF model copy (for --shape)

    def plain_hf_baseline(self, device: str, dtype: torch.dtype, mode: str = "separate"):
        """A plain transformers model with the same weights, never wrapped by the bridge.

        ``separate``: for ``--model``, loaded again with ``from_pretrained`` from the folder
        persona_lens loads from; for ``--shape``, a deep copy of the random model taken before
        the bridge wrapped it. ``native``: the bridge's own HF model inside
        ``persona_lens.native.native`` (bridge wrappers removed; saves one copy of the weights).
        Both run SDPA attention.
        """
        if mode == "native":
            return None
        if isinstance(self._baseline_source, torch.nn.Module):
            return self._baseline_source
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(self._baseline_source, dtype=dtype)
        return model.to(device).eval()


def default_tokenizer():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model_name("default")[1])
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_subject(args, device: str, dtype: torch.dtype, *, keep_baseline_copy: bool = True) -> Subject:
    """The bridge for ``--model``/``--shape`` (``--model default`` when neither is given)."""
    label = f"shape:{args.shape}" + (f"[{args.n_layers} layers]" if args.n_layers else "")
    if args.shape == TINY:
        kwargs = dict(n_layers=args.n_layers or 3, seed=args.seed, device=device, dtype=dtype)
        bridge = testing.tiny_model(**kwargs)
        pristine = testing.tiny_hf_model(**kwargs) if keep_baseline_copy else None  # the same weights
        info = {"shape": TINY, "params": parameter_count(bridge.original_model)}
        return Subject(bridge, bridge.tokenizer, label, info, pristine)
    if args.shape:
        hf = testing.random_causal_lm(shape_config(args.shape, args.n_layers), device=device, dtype=dtype,
                                      seed=args.seed)
        pristine = copy.deepcopy(hf) if keep_baseline_copy else None
        tok = default_tokenizer()
        hf.generation_config.pad_token_id = tok.pad_token_id
        hf.generation_config.eos_token_id = tok.eos_token_id
        if pristine is not None:
            pristine.generation_config = copy.deepcopy(hf.generation_config)
        bridge = from_hf(hf, tok, label)
        info = {"shape": args.shape, "params": parameter_count(hf)}
        return Subject(bridge, tok, label, info, pristine)
    name = args.model or "default"
    bridge = load_model(name, device=device, dtype=dtype)
    _, source, model_id = resolve_model_name(name)
    info = {"model_id": model_id, "params": parameter_count(bridge.original_model), "n_layers": n_layers(bridge)}
    return Subject(bridge, bridge.tokenizer, name, info, source)


def load_with_baseline(args, device: str, dtype: torch.dtype) -> tuple[Subject, Any]:
    """The subject for ``--model``/``--shape`` and its plain-HF baseline model for ``--baseline``
    (``None`` for ``native``: the baseline then runs the bridge's model inside ``native``)."""
    log(f"loading {'shape ' + args.shape if args.shape else args.model or 'default'} on {device} ({dtype})")
    subject = load_subject(args, device, dtype, keep_baseline_copy=args.baseline == "separate")
    return subject, subject.plain_hf_baseline(device, dtype, args.baseline)


@contextlib.contextmanager
def baseline_hf(bridge, baseline_model) -> Iterator[Any]:
    """The plain HF model a baseline runs: ``baseline_model`` (``--baseline separate``), or, when it
    is ``None`` (``native``), the bridge's own HF model inside ``persona_lens.native.native``."""
    if baseline_model is not None:
        yield baseline_model
        return
    with native(bridge) as hf:
        yield hf


