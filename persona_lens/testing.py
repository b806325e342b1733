"""Tiny random-weight models, built offline, for tests and benchmarks.

``tiny_model()`` makes a persona_lens model in well under a second with no hub access and no
embedded package: a random-weight HF causal LM of a real architecture (Llama, as SmolLM2; or
Gemma 3, as Gemma-3-270M) built from its config, plus a byte-level tokenizer built with the
``tokenizers`` library, wrapped exactly as :func:`persona_lens.models.load_model` wraps a real
checkpoint (:func:`persona_lens.models.from_hf`). Everything layer-, position- and hook-related
behaves as on a real model; only the weights (hence the text) are meaningless.

The tokenizer mirrors the two embedded models: ``chat_template=True`` gives SmolLM2's layout (a
ChatML template, BOS ``<|im_start|>``, EOS ``<|im_end|>``), ``False`` Gemma-3-270M's (no template,
so the plain-text prompt format of base models; BOS ``<bos>``, EOS ``<eos>``). Like a real
checkpoint's, it is read from a folder with ``AutoTokenizer``: TransformerLens re-reads it from
there to switch on BOS.

``random_causal_lm`` builds any config with seeded random weights (the benchmarks' ``--shape``).
Seeds never touch the caller's global RNG.
"""

from __future__ import annotations

import tempfile
from typing import Any

import torch

from .errors import UnknownModelError
from .generation import seeded_rng
from .models import d_model, from_hf, model_id, n_layers
from .vectors import PersonaVector

ARCHS = ("llama", "gemma3")
PAD, BOS, EOS, IM_START, IM_END = "<pad>", "<bos>", "<eos>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (PAD, BOS, EOS, IM_START, IM_END)  # ids 0..4; the 256 byte tokens follow
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def tiny_tokenizer(*, chat_template: bool = True):
    """A byte-level tokenizer: five special tokens, then one token per byte and no merges, so
    every string tokenizes (one token per byte) and decodes back exactly."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    vocab.update({ch: len(SPECIAL_TOKENS) + i for i, ch in enumerate(sorted(alphabet))})
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token=PAD, bos_token=IM_START if chat_template else BOS,
        eos_token=IM_END if chat_template else EOS,
    )
    tokenizer.chat_template = CHATML_TEMPLATE if chat_template else None
    return tokenizer


def tiny_config(arch: str = "llama", *, vocab_size: int, n_layers: int = 3, d_model: int = 64,
                n_heads: int = 4, n_kv_heads: int = 2, d_mlp: int = 128, bos_token_id: int = 1,
                eos_token_id: int = 2, pad_token_id: int = 0):
    """A small ``LlamaConfig`` or ``Gemma3TextConfig`` (grouped-query attention; Gemma 3 with a
    16-token sliding window on every layer but the last, so both attention kinds run, and tied
    embeddings as Gemma-3-270M)."""
    from transformers import Gemma3TextConfig, LlamaConfig

    common: dict[str, Any] = dict(vocab_size=vocab_size, hidden_size=d_model, intermediate_size=d_mlp,
                                  num_hidden_layers=n_layers, num_attention_heads=n_heads,
                                  num_key_value_heads=n_kv_heads, max_position_embeddings=1024,  # context-window tests
                                  bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id)
    if arch == "llama":
        # Untied: with tied embeddings a random Llama's greedy text is its last token repeated.
        return LlamaConfig(architectures=["LlamaForCausalLM"], rms_norm_eps=1e-5, tie_word_embeddings=False,
                           **common)
    if arch == "gemma3":
        head_dim = d_model // n_heads
        return Gemma3TextConfig(architectures=["Gemma3ForCausalLM"], head_dim=head_dim, query_pre_attn_scalar=head_dim,
                                sliding_window=16, tie_word_embeddings=True, rms_norm_eps=1e-6,
                                layer_types=["sliding_attention"] * (n_layers - 1) + ["full_attention"], **common)
    raise UnknownModelError(f"tiny models come in the architectures {ARCHS}, not {arch!r}")


def random_causal_lm(config, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                     seed: int = 0) -> torch.nn.Module:
    """``AutoModelForCausalLM`` of ``config`` with random weights (seeded), built directly on
    ``device`` with SDPA attention, in eval mode."""
    from transformers import AutoModelForCausalLM

    with seeded_rng(seed, device), torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    return model.eval()


def tiny_hf_model(
    arch: str = "llama",
    *,
    n_layers: int = 3,
    d_model: int = 64,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    d_mlp: int = 128,
    seed: int = 0,
    chat_template: bool = True,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.nn.Module:
    """The plain transformers model inside ``tiny_model`` with the same arguments: the same
    weights, never wrapped by TransformerLens (an independent reference for tests)."""
    tokenizer = tiny_tokenizer(chat_template=chat_template)
    config = tiny_config(arch, vocab_size=len(tokenizer), n_layers=n_layers, d_model=d_model, n_heads=n_heads,
                         n_kv_heads=n_kv_heads, d_mlp=d_mlp, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return random_causal_lm(config, device=device, dtype=dtype, seed=seed)


def tiny_model(
    arch: str = "llama",
    *,
    n_layers: int = 3,
    d_model: int = 64,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    d_mlp: int = 128,
    seed: int = 0,
    chat_template: bool = True,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
):
    """A persona_lens model (``TransformerBridge``) with random weights; see the module docstring."""
    from transformers import AutoTokenizer

    hf_model = tiny_hf_model(arch, n_layers=n_layers, d_model=d_model, n_heads=n_heads, n_kv_heads=n_kv_heads,
                             d_mlp=d_mlp, seed=seed, chat_template=chat_template, device=device, dtype=dtype)
    with tempfile.TemporaryDirectory(prefix="persona-lens-tiny-") as folder:
        tiny_tokenizer(chat_template=chat_template).save_pretrained(folder)
        # As load_model reads a checkpoint's tokenizer; TransformerLens re-reads the folder.
        tokenizer = AutoTokenizer.from_pretrained(folder)
        return from_hf(hf_model, tokenizer, f"persona-lens/tiny-{arch}")


def tiny_vector(model, seed: int = 0, persona: str = "random") -> PersonaVector:
    """A random ``PersonaVector`` for ``model``: one unit direction per layer (seeded), so that
    ``alpha`` is the norm of what steering adds."""
    g = torch.Generator().manual_seed(seed)
    vectors = torch.randn(n_layers(model), d_model(model), generator=g)
    vectors = vectors / vectors.norm(dim=1, keepdim=True)
    return PersonaVector(vectors, {"persona": persona, "model_id": model_id(model), "method": "random", "seed": seed})
