"""Shared helpers for the scripts in ``benchmarks/``.

* command-line arguments every benchmark takes (``add_common_args``): ``--model`` (an embedded
  name, HF id or local path) or ``--shape`` (random weights of a named architecture, no
  download), ``--n-layers`` (shrink a shape's depth), ``--device``, ``--dtype``,
  ``--repeats``, ``--warmup``, ``--seed``;
* ``load_subject(args)``: a persona_lens ``TransformerBridge`` for ``--model`` or ``--shape``,
  plus an *independent* plain-HF baseline model (``plain_hf_baseline``);
* ``SHAPES``: HF config dicts of real models (``qwen2.5-7b``, ``llama-3.1-8b``, ``gemma-3-4b``,
  and the small ``smollm2-135m``/``gemma-3-270m`` for smoke runs), instantiated with random
  weights (``random_hf_model``) — the throughput of a shape does not depend on its weights;
* ``benchmark_parser``: a script's parser (its docstring's first paragraph, the common
  arguments, ``--baseline separate|native``); ``load_with_baseline``: the subject and its
  plain-HF baseline model for ``--baseline``; ``baseline_hf``: the HF model a baseline runs;
* timing (``time_call``: CUDA-synchronized wall time; ``time_alternating``: variants timed in
  turn, ``--repeats`` times, wall and CPU time and memory per run), ``median``, peak memory
  (``reset_peak_memory``/``peak_memory_mb`` for the process; ``PeakMemory`` for one block,
  with ``pin_malloc_to_mmap`` so the CPU's RSS follows live tensors), ``environment``;
* ``chat_prompt_of_length``: chat prompts whose templated length is exactly N tokens;
  ``left_padded_chat_prompts``: a batch of them as left-padded ids for HF ``generate``;
* steered generation: ``random_steering`` (a seeded random unit direction at a layer),
  ``greedy_generate_kwargs`` (exactly N greedy new tokens), ``baseline_generate`` (HF
  ``generate`` on the baseline model);
* ``emit``: one human-readable line (``headline`` and ``ratio_note`` build its common parts),
  then one JSON line (``{"benchmark": ...}``) per result.

Random-shape models use the embedded SmolLM2 tokenizer (49,152 ids, fewer than every shape's
vocabulary, so every prompt id is valid; generated ids beyond it decode to nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import random
import resource
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

# Make `persona_lens` importable when a script runs from a source checkout without installing.
_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

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


def random_hf_model(shape: str, device: str, dtype: torch.dtype, n_layers: int | None = None, seed: int = 0):
    """``AutoModelForCausalLM`` of a named shape with random weights, built directly on ``device``."""
    from transformers import AutoModelForCausalLM

    config = shape_config(shape, n_layers)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    return model.eval()


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- arguments


def add_common_args(parser: argparse.ArgumentParser, *, default_repeats: int = 5) -> argparse.ArgumentParser:
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--model", default=None,
                     help="embedded name (default, gemma-3-270m), HF id or local path (default: 'default')")
    src.add_argument("--shape", default=None, choices=sorted(SHAPES),
                     help="random weights of a named architecture instead of a real model (no download)")
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
    if name:
        return name
    from persona_lens.models import default_device

    return default_device()


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
        ``persona_lens.models.native`` (bridge wrappers removed; saves one copy of the weights).
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

    from persona_lens.models import resolve_model_name

    tok = AutoTokenizer.from_pretrained(resolve_model_name("default")[1])
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_subject(args, device: str, dtype: torch.dtype, *, keep_baseline_copy: bool = True) -> Subject:
    """The bridge for ``--model``/``--shape`` (``--model default`` when neither is given)."""
    from persona_lens.models import load_model, n_layers, resolve_model_name

    if args.shape:
        from transformer_lens.model_bridge import TransformerBridge

        hf = random_hf_model(args.shape, device, dtype, args.n_layers, args.seed)
        pristine = copy.deepcopy(hf) if keep_baseline_copy else None
        tok = default_tokenizer()
        hf.generation_config.pad_token_id = tok.pad_token_id
        hf.generation_config.eos_token_id = tok.eos_token_id
        if pristine is not None:
            pristine.generation_config = copy.deepcopy(hf.generation_config)
        label = f"shape:{args.shape}" + (f"[{args.n_layers} layers]" if args.n_layers else "")
        bridge = TransformerBridge.boot_transformers(f"random/{args.shape}", hf_model=hf, tokenizer=tok,
                                                     device=device, dtype=dtype)
        bridge.eval()
        bridge.persona_lens_model_id = label
        bridge.persona_lens_key = label
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
    is ``None`` (``native``), the bridge's own HF model inside ``persona_lens.models.native``."""
    if baseline_model is not None:
        yield baseline_model
        return
    from persona_lens.models import native

    with native(bridge) as hf:
        yield hf


# --------------------------------------------------------------------------- prompts


_WORDS = ("time people year way day man thing woman life child world school state family student group "
          "country problem hand part place case week company system program question work government "
          "number night point home water room mother area money story fact month lot right study book "
          "eye job word business issue side kind head house service friend father power hour game line").split()


def chat_prompt_of_length(tokenizer, n_tokens: int, seed: int = 0) -> tuple[list[dict], int]:
    """A one-message chat prompt whose templated ``prompt_ids`` length is ``n_tokens`` (or the
    closest reachable, returned as the second value)."""
    from persona_lens.chat import make_messages, prompt_ids

    rng = random.Random(seed)
    words: list[str] = []

    def length(ws):
        return len(prompt_ids(tokenizer, make_messages(" ".join(ws) or "x")))

    while length(words) < n_tokens - 2 and len(words) < 4 * n_tokens:  # random common words
        words.append(rng.choice(_WORDS))
    while length(words) > n_tokens and len(words) > 1:
        words.pop()
    while length(words) < n_tokens and len(words) < 4 * n_tokens:  # top up one short word at a time
        words.append("a")
        if length(words) > n_tokens:
            words.pop()
            break
    return make_messages(" ".join(words) or "x"), length(words)


def left_padded_chat_prompts(tokenizer, batch: int, n_tokens: int, seed: int, pad_id: int, device: str
                             ) -> tuple[list[list[dict]], list[int], torch.Tensor, torch.Tensor]:
    """``batch`` prompts of :func:`chat_prompt_of_length` (row ``i`` seeded ``seed * 1000 + i``):
    ``(messages, sorted distinct lengths, ids, attention_mask)``, ids left-padded on ``device``."""
    from persona_lens.chat import prompt_ids
    from persona_lens.generate import _left_pad

    made = [chat_prompt_of_length(tokenizer, n_tokens, seed=seed * 1000 + i) for i in range(batch)]
    messages = [m for m, _ in made]
    ids, mask = _left_pad([prompt_ids(tokenizer, m) for m in messages], pad_id)
    return messages, sorted({n for _, n in made}), ids.to(device), mask.to(device)


# --------------------------------------------------------------------------- steered generation


def random_steering(bridge, layer: int | None, alpha: float, positions: str, seed: int) -> tuple[int, Any]:
    """``(layer, Steering)``: a random unit direction (seeded by ``seed``) at ``layer``
    (default ``n_layers // 2``) with coefficient ``alpha``."""
    from persona_lens.models import d_model, n_layers
    from persona_lens.steering import Steering

    layer = layer if layer is not None else n_layers(bridge) // 2
    g = torch.Generator().manual_seed(seed)
    direction = torch.randn(d_model(bridge), generator=g)
    return layer, Steering.from_vector(direction / direction.norm(), layer, alpha, positions=positions)


def generation_parser(doc: str) -> argparse.ArgumentParser:
    """:func:`benchmark_parser` plus the options of the steered-generation benchmarks."""
    p = benchmark_parser(doc, default_repeats=5)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default: 1 8 on CPU, 1 32 on a GPU")
    p.add_argument("--layer", type=int, default=None, help="steered layer (default: n_layers // 2)")
    p.add_argument("--alpha", type=float, default=4.0)
    p.add_argument("--positions", default="response", choices=["response", "prompt", "all"])
    return p


@dataclass
class GenerationSetup:
    subject: Any
    baseline_model: Any
    batch_sizes: list[int]
    layer: int
    steering: Any
    gen_kwargs: dict[str, Any]


def generation_setup(args, device: str, dtype: torch.dtype) -> GenerationSetup:
    """Model and baseline, batch sizes (1 8 on CPU, 1 32 on a GPU), a random steering and the
    greedy HF ``generate`` kwargs, from :func:`generation_parser`'s options."""
    subject, baseline_model = load_with_baseline(args, device, dtype)
    on_gpu = torch.device(device).type == "cuda"
    layer, steering = random_steering(subject.bridge, args.layer, args.alpha, args.positions, args.seed)
    return GenerationSetup(subject, baseline_model, args.batch_sizes or ([1, 32] if on_gpu else [1, 8]), layer,
                           steering, greedy_generate_kwargs(subject.tokenizer, args.new_tokens))


def greedy_generate_kwargs(tokenizer, n_new: int) -> dict[str, Any]:
    """HF ``generate`` keyword arguments for exactly ``n_new`` greedy tokens per row
    (``min_new_tokens``: no early stop at EOS); ``pad_token_id`` falls back to EOS."""
    from persona_lens.generate import padding_id

    return dict(max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False, temperature=None, top_p=None,
                top_k=None, pad_token_id=padding_id(tokenizer), eos_token_id=tokenizer.eos_token_id)


def baseline_generate(bridge, baseline_model, ids: torch.Tensor, mask: torch.Tensor, gen_kwargs: dict) -> int:
    """Plain HF ``generate`` on the baseline model (:func:`baseline_hf`), inference mode; returns
    the number of new tokens per row."""
    with torch.inference_mode(), baseline_hf(bridge, baseline_model) as hf:
        out = hf.generate(input_ids=ids, attention_mask=mask, **gen_kwargs)
    return out.shape[1] - ids.shape[1]


# --------------------------------------------------------------------------- timing and memory


def synchronize(device: str | torch.device) -> None:
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    elif dev.type == "mps":
        torch.mps.synchronize()


def time_call(fn: Callable[[], Any], device: str | torch.device) -> tuple[float, Any]:
    """Wall seconds of ``fn()`` with the device synchronized before and after."""
    synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    synchronize(device)
    return time.perf_counter() - t0, out


def median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def reset_peak_memory(device: str | torch.device) -> None:
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)


def peak_memory_mb(device: str | torch.device) -> dict[str, float]:
    """CUDA: peak allocated since the last reset. CPU: the process' peak RSS so far."""
    dev = torch.device(device)
    out = {}
    if dev.type == "cuda":
        out["cuda_peak_allocated_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out["process_peak_rss_mb"] = rss / (2**20 if sys.platform == "darwin" else 2**10)
    return out


def _rss_bytes() -> int:
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:  # Linux fallback
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def pin_malloc_to_mmap(threshold: int = 1 << 16) -> bool:
    """glibc: serve every allocation above ``threshold`` bytes with its own ``mmap`` and return it
    to the OS on free (fixed threshold, no dynamic raise; trim at the same size). Then the RSS
    follows live tensor memory instead of malloc's free lists. Returns False where not glibc."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold)) and bool(libc.mallopt(M_TRIM_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False


def pin_cpu_malloc(device: str) -> bool:
    """:func:`pin_malloc_to_mmap` on the CPU (where :class:`PeakMemory` reads the RSS); whether it took."""
    return torch.device(device).type == "cpu" and pin_malloc_to_mmap()


def peak_memory_method(device: str, mmap_pinned: bool) -> str:
    """How :class:`PeakMemory` measured on ``device`` (for the JSON record)."""
    if torch.device(device).type == "cuda":
        return "cuda max_memory_allocated above the pre-call allocation"
    return "sampled process RSS (1 ms) above the pre-call RSS" + (
        ", glibc mallopt: allocations > 64 KiB mmap-backed" if mmap_pinned else "")


class PeakMemory:
    """Peak memory of a block above its starting point, in MB (``peak_mb``).

    GPU: ``torch.cuda.max_memory_allocated`` above what was allocated at the start (exact for the
    caching allocator). CPU: torch has no allocator statistics and ``tracemalloc`` does not see
    torch's allocations, so the peak resident set size sampled every ``interval`` seconds by a
    thread, minus the RSS at the start; with :func:`pin_malloc_to_mmap` the RSS follows live
    tensors. A peak shorter than the interval can be missed: CPU numbers are lower bounds.
    """

    def __init__(self, device: str, interval: float = 0.001):
        self.cuda = torch.device(device).type == "cuda"
        self.device, self.interval = device, interval
        self.peak_mb = float("nan")

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            self._start = _rss_bytes()
            self._peak = self._start
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self._peak = max(self._peak, _rss_bytes())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize(self.device)
            self.peak_mb = (torch.cuda.max_memory_allocated(self.device) - self._start) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self._peak = max(self._peak, _rss_bytes())
            self.peak_mb = (self._peak - self._start) / 2**20


@dataclass
class Alternated:
    """What :func:`time_alternating` measured, per variant name, one entry per run."""

    seconds: dict[str, list[float]]
    cpu_seconds: dict[str, list[float]]
    peak_mb: dict[str, list[Any]]  # memory="block": PeakMemory MB; "process": peak_memory_mb() dicts
    results: dict[str, list[Any]]

    def rate(self, amount: float) -> dict[str, float]:
        """``amount`` (tokens, rows) per median second."""
        return {k: amount / median(v) for k, v in self.seconds.items()}

    def cpu_time_ratio(self, reference: str = "baseline", other: str = "ours") -> float:
        """Median CPU seconds of ``reference`` / those of ``other`` (throughput ratio by CPU time)."""
        return median(self.cpu_seconds[reference]) / median(self.cpu_seconds[other])

    def median_peak_mb(self, digits: int = 1) -> dict[str, float]:
        return {k: round(median(v), digits) for k, v in self.peak_mb.items()}

    def rounded_seconds(self, digits: int, *, cpu: bool = False) -> dict[str, list[float]]:
        """``{"<name>_s": [wall seconds]}`` (``cpu``: ``{"<name>_cpu_s": [CPU seconds]}``), rounded."""
        times, suffix = (self.cpu_seconds, "_cpu_s") if cpu else (self.seconds, "_s")
        return {f"{k}{suffix}": [round(t, digits) for t in v] for k, v in times.items()}


def time_alternating(variants: dict[str, Callable[[], Any]], repeats: int, device: str, *,
                     memory: str = "block") -> Alternated:
    """Run each of ``variants`` in turn, ``repeats`` rounds (so drift from other load hits all alike),
    each run timed by :func:`time_call` and by process CPU time. ``memory``: ``"block"`` wraps
    each run in :class:`PeakMemory`; ``"process"`` resets the CUDA peak before the run and records
    :func:`peak_memory_mb` after it."""
    if memory not in ("block", "process"):
        raise ValueError(f"memory must be 'block' or 'process', not {memory!r}")
    out = Alternated(*({k: [] for k in variants} for _ in range(4)))
    for _ in range(repeats):
        for name, fn in variants.items():
            cpu0 = time.process_time()
            if memory == "block":
                with PeakMemory(device) as pm:
                    seconds, result = time_call(fn, device)
                peak = pm.peak_mb
            else:
                reset_peak_memory(device)
                seconds, result = time_call(fn, device)
                peak = peak_memory_mb(device)
            out.seconds[name].append(seconds)
            out.cpu_seconds[name].append(time.process_time() - cpu0)
            out.peak_mb[name].append(peak)
            out.results[name].append(result)
    return out


def environment(device: str, dtype: torch.dtype) -> dict[str, Any]:
    import transformers

    env = {
        "device": device,
        "dtype": str(dtype).replace("torch.", ""),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "loadavg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("transformer-lens", "persona-lens"):
        try:
            env[dist.replace("-", "_")] = version(dist)
        except PackageNotFoundError:  # pragma: no cover
            env[dist.replace("-", "_")] = None
    if torch.device(device).type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return env


# --------------------------------------------------------------------------- output


def emit(benchmark: str, human: str, record: dict[str, Any]) -> None:
    """Print one human-readable line and one JSON line (``{"benchmark": ..., ...}``)."""
    print(human, flush=True)
    print(json.dumps({"benchmark": benchmark, **record}, default=_json_default, sort_keys=False), flush=True)


def headline(benchmark: str, subject: Subject, device: str, env: dict[str, Any]) -> str:
    """The start of a human line: ``"<benchmark> <model> <device>/<dtype> "``."""
    return f"{benchmark} {subject.label} {device}/{env['dtype']} "


def ratio_note(ratio: float, repeats: int, cpu_time_ratio: float | None = None) -> str:
    """The end of a human line: ``"ratio R (CPU-time ratio C; median of N)"``."""
    cpu = "" if cpu_time_ratio is None else f"CPU-time ratio {cpu_time_ratio:.3f}; "
    return f"ratio {ratio:.3f} ({cpu}median of {repeats})"


def _json_default(o: Any) -> Any:
    if isinstance(o, torch.dtype):
        return str(o).replace("torch.", "")
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


def log(msg: str) -> None:
    """Progress notes go to stderr so stdout holds only result lines."""
    print(msg, file=sys.stderr, flush=True)
