"""Creativity metrics and their aggregation.

Judge-based (the paper's setting, see ``judging.py``):

* **originality**, **elaboration**: 1-5 per idea; per idea the mean over judge samples, per
  response the mean over its ideas, per task x method the mean (and sample std) over responses.
* **flexibility**: the number of distinct categories the judge assigns (mean over samples).
* **fluency**: the number of distinct relevant ideas: exact duplicates (normalised text) and
  near duplicates (embedding cosine similarity > 0.9) removed; with a judge, ideas it labels
  irrelevant are not counted.

Offline proxies (no API; **proxies, not the paper's metrics** — names end in ``_proxy``):

* ``flexibility_proxy``: the number of clusters of the idea embeddings (agglomerative, average
  linkage, cosine distance threshold 0.5 by default);
* ``diversity_proxy``: mean pairwise cosine distance among a response's ideas;
* ``prompt_distance_proxy``: mean cosine distance of the ideas from the prompt.

Embeddings are all-MiniLM-L6-v2 (``persona_lens.judges.embedding.embed_texts``; unit norm).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ...stats import mean_std, nanmean
from .parse import normalize_idea

DUPLICATE_SIMILARITY = 0.9
CLUSTER_DISTANCE = 0.5

#: metric -> (label, is an offline proxy)
METRICS: dict[str, tuple[str, bool]] = {
    "originality": ("Originality (1-5, judge)", False),
    "elaboration": ("Elaboration (1-5, judge)", False),
    "fluency": ("Fluency (distinct ideas)", False),
    "flexibility": ("Flexibility (judge categories)", False),
    "flexibility_proxy": ("Flexibility proxy (embedding clusters)", True),
    "diversity_proxy": ("Semantic diversity proxy (mean pairwise cosine distance)", True),
    "prompt_distance_proxy": ("Distance from prompt proxy (mean cosine distance)", True),
    "n_ideas": ("Ideas parsed", False),
}
EFFICIENCY = {
    "wall_s": "Wall time per query (s)",
    "calls": "Model calls per query",
    "prompt_tokens": "Prompt tokens per query",
    "gen_tokens": "Generated tokens per query",
}


# ----------------------------------------------------------------------------- per idea/response


def per_idea_means(samples: Sequence[Sequence[float | None]]) -> list[float]:
    """``samples[s][i]`` = judge sample s's score for idea i -> per-idea mean over samples (NaN if none)."""
    if not samples:
        return []
    n = max(len(s) for s in samples)
    return [nanmean(s[i] if i < len(s) else None for s in samples) for i in range(n)]


def response_score(samples: Sequence[Sequence[float | None]]) -> float:
    """Mean over ideas of the per-idea mean over judge samples (NaN when nothing was scored)."""
    return nanmean(per_idea_means(samples))


def dedupe(ideas: Sequence[str], embeddings: np.ndarray | None = None,
           threshold: float = DUPLICATE_SIMILARITY) -> list[int]:
    """Indices of the ideas kept: first of each normalised-text duplicate, then of each group with
    embedding cosine similarity > ``threshold`` to an already kept idea."""
    kept: list[int] = []
    seen: set[str] = set()
    for i, idea in enumerate(ideas):
        key = normalize_idea(idea)
        if not key or key in seen:
            continue
        if embeddings is not None and kept:
            sims = embeddings[kept] @ embeddings[i]
            if float(np.max(sims)) > threshold:
                continue
        seen.add(key)
        kept.append(i)
    return kept


def mean_pairwise_distance(embeddings: np.ndarray) -> float:
    """Mean cosine distance over distinct pairs of unit vectors (NaN for fewer than 2)."""
    n = len(embeddings)
    if n < 2:
        return float("nan")
    sims = embeddings @ embeddings.T
    iu = np.triu_indices(n, k=1)
    return float(np.mean(1.0 - sims[iu]))


def mean_distance_to(embeddings: np.ndarray, anchor: np.ndarray) -> float:
    if len(embeddings) == 0:
        return float("nan")
    return float(np.mean(1.0 - embeddings @ anchor))


def cluster_count(embeddings: np.ndarray, distance_threshold: float = CLUSTER_DISTANCE) -> int:
    """Number of agglomerative clusters (average linkage, cosine distance) of the ideas."""
    n = len(embeddings)
    if n <= 1:
        return n
    from sklearn.cluster import AgglomerativeClustering

    model = AgglomerativeClustering(n_clusters=None, metric="cosine", linkage="average",
                                    distance_threshold=distance_threshold)
    return int(len(set(model.fit_predict(np.asarray(embeddings, dtype=np.float64)))))


def offline_metrics(ideas: Sequence[str], idea_emb: np.ndarray | None, prompt_emb: np.ndarray | None,
                    *, duplicate_similarity: float = DUPLICATE_SIMILARITY,
                    cluster_distance: float = CLUSTER_DISTANCE) -> dict[str, float]:
    """fluency (+ the three proxies when embeddings are given) for one idea list."""
    kept = dedupe(ideas, idea_emb, duplicate_similarity)
    out: dict[str, float] = {"n_ideas": float(len(ideas)), "fluency": float(len(kept))}
    if idea_emb is not None:
        emb = idea_emb[kept] if kept else idea_emb[:0]
        out["flexibility_proxy"] = float(cluster_count(emb, cluster_distance))
        out["diversity_proxy"] = mean_pairwise_distance(emb)
        if prompt_emb is not None:
            out["prompt_distance_proxy"] = mean_distance_to(emb, prompt_emb)
    return out


def average_dicts(dicts: Sequence[dict[str, float]]) -> dict[str, float]:
    """Key-wise NaN-aware mean (used to average a discussion's per-agent final lists)."""
    keys: list[str] = []
    for d in dicts:
        keys.extend(k for k in d if k not in keys)
    return {k: nanmean(d.get(k) for d in dicts) for k in keys}


# ----------------------------------------------------------------------------- tables


def summarize(rows: Sequence[dict], metrics: Sequence[str], *, by: Sequence[str] = ("task", "method")) -> list[dict]:
    """Long table: one row per group x metric with mean, std (ddof=1), n over responses."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in by), []).append(row)
    out = []
    for key, members in groups.items():
        for metric in metrics:
            mean, std, n = mean_std(m.get(metric) for m in members)
            if n == 0:
                continue
            out.append({**dict(zip(by, key)), "metric": metric, "mean": mean, "std": std, "n": n,
                        "proxy": METRICS.get(metric, ("", False))[1]})
    return out


def fmt(mean: float, std: float, digits: int = 2) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"
