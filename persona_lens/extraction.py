"""Persona-vector extraction (Persona Vectors, Chen et al. 2025).

trait spec -> contrastive responses (``generate.generate_contrastive``) -> optional judge
filtering (``filtering``) -> mean ``hook_resid_post`` over response tokens, per layer ->
``mean(pos) - mean(neg)`` = the persona vector.

Methods: ``mean_diff`` (the paper's, default); ``pca`` (first principal component of the
paired pos - neg differences, signed and scaled to agree with mean_diff); ``probe`` (logistic
regression direction per layer, scaled to the mean_diff norm).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from .activations import capture
from .errors import NoEffectivePairsError
from .filtering import filter_pairs, judge_rows
from .generation import generate_contrastive
from .hooks import EMBED, FINAL_NORM
from .io import atomic_write_json, atomic_write_text
from .models import model_id
from .vectors import PersonaVector

METHODS = ("mean_diff", "pca", "probe")
POSITIONS = ("response_mean", "prompt_mean", "last_prompt")


def rows_to_prompts(rows: Sequence[dict]) -> list[list[dict]]:
    return [[{"role": "system", "content": r["system"]}, {"role": "user", "content": r["question"]}]
            if r.get("system") else [{"role": "user", "content": r["question"]}] for r in rows]


def direction_from_activations(
    pos: Float[Tensor, "n_pos layers d"],
    neg: Float[Tensor, "n_neg layers d"],
    method: str = "mean_diff",
) -> Float[Tensor, "layers d"]:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError(f"need positive and negative activations, got {len(pos)} pos and {len(neg)} neg")
    diff = pos.mean(0) - neg.mean(0)
    if method == "mean_diff":
        return diff
    if method == "pca":
        if len(pos) != len(neg):
            raise ValueError("pca needs paired activations (as many pos as neg rows, same order)")
        d = (pos - neg).double()
        out = []
        for l in range(d.shape[1]):
            x = d[:, l]
            # The uncentred first singular vector: the dominant direction of the differences.
            _, _, vh = torch.linalg.svd(x, full_matrices=False)
            u = vh[0].float()
            sign = torch.sign(u @ diff[l]) or 1.0
            out.append(u * sign * diff[l].norm())
        return torch.stack(out)
    from sklearn.linear_model import LogisticRegression

    features = torch.cat([pos, neg]).numpy()
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    out = []
    for l in range(features.shape[1]):
        xl = features[:, l]
        scale = xl.std(0) + 1e-6
        clf = LogisticRegression(C=1.0, max_iter=2000).fit(xl / scale, y)
        w = torch.from_numpy(clf.coef_[0] / scale).float()
        w = w / w.norm().clamp_min(1e-12) * diff[l].norm()
        out.append(w)
    return torch.stack(out)


def extract_from_rows(
    model,
    rows: Sequence[dict],
    *,
    method: str = "mean_diff",
    position: str = "response_mean",
    batch_size: int = 8,
    persona: str | None = None,
    progress: bool = True,
    extra_metadata: dict | None = None,
) -> PersonaVector:
    """Persona vector from contrastive response rows (``polarity`` pos/neg, system, question, response)."""
    if position not in POSITIONS:
        raise ValueError(f"unknown position {position!r}; choose from {POSITIONS}")
    rows = list(rows)
    if method == "pca":
        rows = _paired(rows)
    pos_rows = [r for r in rows if r["polarity"] == "pos"]
    neg_rows = [r for r in rows if r["polarity"] == "neg"]
    if not pos_rows or not neg_rows:
        raise ValueError(f"extraction needs pos and neg responses; got {len(pos_rows)} pos, {len(neg_rows)} neg")
    ordered = pos_rows + neg_rows
    cap = capture(model, rows_to_prompts(ordered), [r["response"] for r in ordered], reductions=[position],
                  batch_size=batch_size, progress=progress, desc="activations", extra_sites=(EMBED, FINAL_NORM))
    # the embedding and final-norm outputs ride along as two more "layers": the same method
    # gives rows 0 and n_layers of a Persona Vectors .pt file (hidden_states[0], [n_layers])
    acts = torch.cat([cap.at(position, EMBED)[:, None], cap[position], cap.at(position, FINAL_NORM)[:, None]], 1)
    directions = direction_from_activations(acts[: len(pos_rows)], acts[len(pos_rows):], method)
    md = {
        "persona": persona or pos_rows[0].get("persona", "persona"),
        "model_id": model_id(model),
        "method": method,
        "positions": position,
        "n_pos": len(pos_rows),
        "n_neg": len(neg_rows),
    }
    md.update(extra_metadata or {})
    return PersonaVector(directions[1:-1], md, embed_diff=directions[0], final_norm_diff=directions[-1])


def _paired(rows: list[dict]) -> list[dict]:
    def key(r: dict) -> tuple:
        return r["pair_index"], r["question_index"], r["sample"]

    neg = {key(r): r for r in rows if r["polarity"] == "neg"}
    out_pos, out_neg = [], []
    for r in rows:
        if r["polarity"] == "pos" and key(r) in neg:
            out_pos.append(r)
            out_neg.append(neg[key(r)])
    return out_pos + out_neg


def extract(
    model,
    spec,
    out: str | os.PathLike | None = None,
    *,
    responses_path: str | os.PathLike | None = None,
    n_per_question: int = 1,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    seed: int = 0,
    batch_size: int = 8,
    method: str = "mean_diff",
    judge=None,
    filter_mode: str = "fixed",
    progress: bool = True,
    backend=None,
) -> tuple[PersonaVector, dict]:
    """The whole pipeline for one spec; returns the vector and an extraction report.

    Responses are cached in ``responses_path`` (resumable); with a ``judge``, rows gain
    ``trait_score``/``coherence_score`` and only effective pairs are used. ``backend`` (a
    :class:`persona_lens.backends.GenerationBackend` serving ``model``'s checkpoint, e.g. vLLM)
    generates the contrastive responses; the activations are always read by ``model``'s HF hooks.
    """
    if responses_path is None:
        responses_path = Path(out).with_suffix(".responses.jsonl") if out else Path(f"{spec.name}.responses.jsonl")
    rows = generate_contrastive(model, spec, responses_path, n_per_question=n_per_question,
                                max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                                batch_size=batch_size, progress=progress, backend=backend)
    report: dict = {"persona": spec.name, "responses": str(responses_path), "n_rows": len(rows)}
    empty = [r for r in rows if not model.tokenizer(r["response"], add_special_tokens=False)["input_ids"]]
    if empty:
        report["dropped_empty"] = len(empty)
        rows = [r for r in rows if r not in empty]
    if judge is not None:
        rows = judge_rows(rows, spec, judge, progress=progress)
        judged_path = Path(responses_path).with_suffix(".judged.jsonl")
        atomic_write_text(judged_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        filt = filter_pairs(rows, mode=filter_mode)
        report["filter"] = filt.to_dict()
        report["judged_responses"] = str(judged_path)
        if not filt.kept:
            counts = ", ".join(f"{n} x {rule}" for rule, n in filt.reason_counts().items()) or "no pairs to filter"
            raise NoEffectivePairsError(
                f"the {filter_mode} filter kept 0 of {filt.n_pairs} pairs (thresholds: trait {filt.threshold}, "
                f"coherence {filt.coherence_threshold}; dropped by: {counts}); the judged rows are in {judged_path}. "
                "Use --filter adaptive, another judge, or --judge none")
        rows = filt.kept
    vector = extract_from_rows(model, rows, method=method, batch_size=batch_size, persona=spec.name,
                               progress=progress,
                               extra_metadata={"n_per_question": n_per_question, "max_new_tokens": max_new_tokens,
                                               "temperature": temperature, "seed": seed,
                                               "judge": getattr(judge, "name", None) if judge else None})
    report.update(n_pos=vector.metadata["n_pos"], n_neg=vector.metadata["n_neg"])
    if out is not None:
        vector.save(out)
        atomic_write_json(Path(out).with_suffix(".report.json"), report)
        report["vector"] = str(out)
    return vector, report
