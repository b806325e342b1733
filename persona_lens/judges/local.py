"""A judge that runs on a local model (any model from ``persona_lens.models.load_model``).

The score is the Persona Vectors rule applied to the model's own next-token distribution,
made exact for tokenizers that split numbers into several tokens. SmolLM2 and Gemma tokenize
"57" as "5", "7" (Llama 3 as one token; both kinds are handled); the probability of answering
57 is then

    P("57") = P("5") * P("7" | "5") * P(next token does not start with a digit | "57"),

the last factor separating 57 from 570 (a following digit would make it another number). One
whitespace-only token before the number is allowed (Gemma may answer "▁", "5", "7").
``number_distribution`` walks the digit tree level by level: every reachable prefix of an
integer 0..100 is one continuation, and all continuations of one level go through the model in
one forward pass after the prompt's KV cache, packed as a token tree with a 4-D attention mask
(each token sees the prompt and its own ancestors). Prefixes whose probability is below
``prune`` are not expanded (their mass counts as "not a number", which only lowers the mass).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..chat import prompt_ids
from ..errors import JudgeError
from ..generation import generate
from ..models import hf_causal_lm, load_model, model_device
from ..native import native
from .base import MAX_SCORE, MIN_NUMBER_MASS, PromptJudge, weighted_score
from .cache import JudgeCache, cache_key

NextLogprobs = Callable[[list[tuple[int, ...]]], Sequence[np.ndarray]]

_SPACE_MARKERS = {"Ġ": " ", "▁": " ", "Ċ": "\n", "ĉ": "\t"}


def token_texts_from_tokenizer(tokenizer: Any, vocab_size: int | None = None) -> list[str]:
    """Surface text of every vocabulary id, with BPE/SentencePiece space markers made spaces."""
    n = vocab_size if vocab_size is not None else len(tokenizer)
    n_tok = min(n, len(tokenizer))
    pieces = tokenizer.convert_ids_to_tokens(list(range(n_tok)))
    out = []
    for piece in pieces:
        text = piece if isinstance(piece, str) else ""
        for marker, repl in _SPACE_MARKERS.items():
            text = text.replace(marker, repl)
        out.append(text)
    out.extend([""] * (n - n_tok))
    return out


class _DigitVocab:
    """Which tokens are digit strings, which are whitespace only, and which start with a digit."""

    def __init__(self, token_texts: Sequence[str]):
        ids, digits, leading_ws, ws_ids = [], [], [], []
        starts = np.zeros(len(token_texts), dtype=bool)
        for i, text in enumerate(token_texts):
            if text[:1] and text[:1] in "0123456789":
                starts[i] = True
            core = text.lstrip()
            if core and text == text.rstrip() and core.isascii() and core.isdigit():
                ids.append(i)
                digits.append(core)
                leading_ws.append(core != text)
            elif text and not text.strip():
                ws_ids.append(i)
        self.ids = np.asarray(ids, dtype=np.int64)
        self.digits = digits
        self.leading_ws = np.asarray(leading_ws, dtype=bool)
        self.ws_ids = np.asarray(ws_ids, dtype=np.int64)
        self.starts_with_digit = starts


def _valid_number_prefix(s: str, max_value: int) -> bool:
    """Digit strings that are canonical integers 0..max_value (prefix-closed: "10" < "100")."""
    if not s or (len(s) > 1 and s[0] == "0"):
        return False
    return int(s) <= max_value


def number_distribution(
    next_logprobs: NextLogprobs,
    token_texts: Sequence[str],
    *,
    max_value: int = MAX_SCORE,
    prune: float = 1e-4,
    vocab: _DigitVocab | None = None,
) -> dict[int, float]:
    """P(the reply is the integer n), n = 0..max_value, by a digit-by-digit tree walk.

    ``next_logprobs(continuations)`` gets a list of token-id tuples (all of the same length,
    ``[()]`` for the prompt itself) and returns one log-probability vector over the vocabulary
    per continuation: the next-token distribution after prompt + continuation.
    """
    vocab = vocab or _DigitVocab(token_texts)
    out: dict[int, float] = {}
    # (continuation, digits so far, probability of reaching it, is the root)
    frontier: list[tuple[tuple[int, ...], str, float, bool]] = [((), "", 1.0, True)]
    while frontier:
        dists = next_logprobs([cont for cont, _, _, _ in frontier])
        if len(dists) != len(frontier):
            raise JudgeError("next_logprobs returned the wrong number of distributions")
        new_frontier = []
        for (cont, prefix, p_reach, is_root), logprobs in zip(frontier, dists):
            probs = np.exp(np.asarray(logprobs, dtype=np.float64))
            if prefix:
                p_more_digits = float(probs[vocab.starts_with_digit].sum())
                p_stop = max(0.0, 1.0 - p_more_digits)
                value = int(prefix)
                out[value] = out.get(value, 0.0) + p_reach * p_stop
            for j, tok in enumerate(vocab.ids):
                if vocab.leading_ws[j] and not is_root:
                    continue  # "5" then " 7" is not 57
                text = prefix + vocab.digits[j]
                if not _valid_number_prefix(text, max_value):
                    continue
                p_next = p_reach * float(probs[tok])
                if p_next <= 0.0 or p_next < prune:
                    continue
                new_frontier.append((cont + (int(tok),), text, p_next, False))
            if is_root:  # one whitespace-only token before the number: " " then "57"
                for tok in vocab.ws_ids:
                    p_next = float(probs[tok])
                    if p_next > 0.0 and p_next >= prune:
                        new_frontier.append((cont + (int(tok),), "", p_next, False))
        frontier = new_frontier
    return out


class LocalJudge(PromptJudge):
    """Score prompts 0-100 with a local model's next-token distribution over numbers.

    Args:
        model: a model from ``persona_lens.models.load_model`` (a TransformerBridge).
        name: shown in reports and used in cache keys (default ``local:<model name>``).
        min_mass: below this probability on integers 0..100 the score is None (paper: 0.25).
        prune: digit prefixes less likely than this are not expanded.
        batch_size: continuations per forward pass when recomputing (architectures that reject
            the tree-masked pass).
        cache_dir: optional on-disk result cache (None: no cache).
    """

    def __init__(
        self,
        model: Any,
        *,
        name: str | None = None,
        min_mass: float = MIN_NUMBER_MASS,
        prune: float = 1e-4,
        batch_size: int = 16,
        cache_dir: str | os.PathLike | None = None,
    ):
        self.model = model
        model_name = name or _model_name(model)
        self.name = model_name if model_name.startswith("local:") else f"local:{model_name}"
        self.min_mass = float(min_mass)
        self.prune = float(prune)
        self.batch_size = int(batch_size)
        self.cache = JudgeCache(cache_dir) if cache_dir is not None else None
        self._vocab: _DigitVocab | None = None
        self._use_tree = True  # one tree-masked pass per level; False: recompute each continuation
        self._tree_checked = False

    @classmethod
    def from_name(
        cls, name: str = "default", *, model: Any = None, device: Any = None, dtype: Any = None, **kwargs: Any
    ) -> LocalJudge:
        """Load ``name`` with ``persona_lens.models.load_model`` (or wrap an already loaded ``model``)."""
        if model is None:
            model = load_model(name, device=device, dtype=dtype)
        kwargs.setdefault("name", f"local:{name}")
        return cls(model, **kwargs)

    # ------------------------------------------------------------------ internals
    @property
    def tokenizer(self) -> Any:
        return self.model.tokenizer

    def _hf(self) -> Any:
        return hf_causal_lm(self.model)

    def _native(self):
        return native(self.model)

    def _digit_vocab(self, vocab_size: int) -> _DigitVocab:
        if self._vocab is None or len(self._vocab.starts_with_digit) != vocab_size:
            self._vocab = _DigitVocab(token_texts_from_tokenizer(self.tokenizer, vocab_size))
        return self._vocab

    def _prompt_ids(self, prompt: str) -> list[int]:
        return list(prompt_ids(self.tokenizer, [{"role": "user", "content": prompt}]))

    def number_probs(self, prompt: str) -> dict[int, float]:
        """P(reply = n) for n in 0..100 under the local model (the judge prompt as a user turn)."""
        ids = self._prompt_ids(prompt)
        if not ids:
            raise JudgeError("the judge prompt tokenized to zero tokens")
        hf = self._hf()
        device = model_device(self.model)
        with self._native(), torch.no_grad():
            out = hf(input_ids=torch.tensor([ids], device=device), use_cache=True)
            root = torch.log_softmax(out.logits[0, -1].float(), dim=-1).cpu().numpy()
            prompt_cache = getattr(out, "past_key_values", None)

            def next_logprobs(conts: list[tuple[int, ...]]) -> list[np.ndarray]:
                if conts == [()]:
                    return [root]
                if self._use_tree and prompt_cache is not None:
                    tree = self._tree_forward(hf, device, prompt_cache, ids, conts)
                    if tree is not None:
                        return tree
                return self._full_forward(hf, device, ids, conts)

            vocab = self._digit_vocab(root.shape[-1])
            return number_distribution(next_logprobs, (), prune=self.prune, vocab=vocab)

    def _tree_forward(self, hf, device, prompt_cache, ids, conts) -> list[np.ndarray] | None:
        """All continuations in one forward pass: their tokens form a tree after the cached prompt.

        Each tree node is one token at position ``n_ctx + depth - 1`` that attends to the prompt
        and to its own ancestors only (a 4-D additive attention mask), so one sequence of ~100
        tokens replaces ~100 sequences. Checked once against plain recomputation; on any
        mismatch or error the judge falls back to recomputation for good.
        """
        n_ctx = len(ids)
        try:
            index: dict[tuple[int, ...], int] = {}
            order: list[tuple[int, ...]] = []
            for cont in conts:
                for depth in range(1, len(cont) + 1):
                    node = cont[:depth]
                    if node not in index:
                        index[node] = len(order)
                        order.append(node)
            n_nodes = len(order)
            allowed = torch.zeros(n_nodes, n_ctx + n_nodes, dtype=torch.bool)
            allowed[:, :n_ctx] = True
            for i, node in enumerate(order):
                for depth in range(1, len(node) + 1):
                    allowed[i, n_ctx + index[node[:depth]]] = True
            dtype = hf.get_input_embeddings().weight.dtype
            mask = torch.zeros(1, 1, n_nodes, n_ctx + n_nodes, dtype=dtype)
            mask.masked_fill_(~allowed, torch.finfo(dtype).min)
            out = hf(
                input_ids=torch.tensor([[node[-1] for node in order]], device=device),
                position_ids=torch.tensor([[n_ctx + len(node) - 1 for node in order]], device=device),
                attention_mask=mask.to(device),
                past_key_values=copy.deepcopy(prompt_cache),
                use_cache=True,
            )
            logprobs = torch.log_softmax(out.logits[0].float(), dim=-1).cpu().numpy()
            result = [logprobs[index[cont]] for cont in conts]
        except Exception:  # an architecture that rejects 4-D masks or cache copies
            self._use_tree = False
            return None
        if not self._tree_checked:
            check = list(range(min(2, len(conts))))  # compare a couple with plain recomputation
            reference = self._full_forward(hf, device, ids, [conts[i] for i in check])
            worst = max(float(np.abs(np.exp(result[i]) - np.exp(ref)).max()) for i, ref in zip(check, reference))
            self._tree_checked = True
            if worst > 2e-2:
                self._use_tree = False
                return None
        return result

    def _full_forward(self, hf, device, ids, conts) -> list[np.ndarray]:
        """Recompute prompt + continuation for every continuation (slow, always correct)."""
        results: list[np.ndarray] = []
        for start in range(0, len(conts), self.batch_size):
            chunk = conts[start : start + self.batch_size]
            full = torch.tensor([list(ids) + list(c) for c in chunk], device=device)
            out = hf(input_ids=full, use_cache=False)
            results.extend(torch.log_softmax(out.logits[:, -1].float(), dim=-1).cpu().numpy())
        return results

    # ------------------------------------------------------------------ public
    def score(self, prompt: str) -> float | None:
        key = cache_key(endpoint="local", model=self.name, prompt=prompt, settings="local-number-tree")
        if self.cache is not None and key in self.cache:
            numbers = self.cache.get(key)
        else:
            numbers = {str(k): v for k, v in self.number_probs(prompt).items()}
            if self.cache is not None:
                self.cache.put(key, numbers, model=self.name, mode="local-number-tree")
        return weighted_score({int(k): float(v) for k, v in numbers.items()}, self.min_mass)

    def complete(self, messages: list[dict], temperature: float = 0.0, max_tokens: int = 512, **kwargs: Any) -> str:
        """The model's reply to a chat, via ``persona_lens.generation.generate``."""
        kwargs.setdefault("progress", False)
        return generate(self.model, [list(messages)], max_new_tokens=max_tokens, temperature=temperature, **kwargs)[0]


def _model_name(model: Any) -> str:
    for attr in ("name_or_path", "model_name"):
        value = getattr(model, attr, None)
        if isinstance(value, str) and value:
            return value
    cfg = getattr(model, "cfg", None)
    value = getattr(cfg, "model_name", None)
    return value if isinstance(value, str) and value else "model"
