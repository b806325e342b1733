"""Effectiveness filtering of contrastive pairs (Persona Vectors section 2, BILLY's variant).

Contrastive generation answers each question under a positive and a negative system prompt.
A pair only teaches the direction if the positive answer shows the trait, the negative one
does not, and both are coherent. Rows (one per response) carry::

    persona, pair_index, question_index, sample, polarity ("pos" | "neg"), system, question,
    response, trait_score, coherence_score            # scores: float or None

A pos row and a neg row form a pair when they share (pair_index, question_index, sample)
(and persona, when rows of several personas are mixed).

Modes (``t`` = ``threshold``, 50 by default; ``c`` = ``coherence_threshold``):

- ``fixed`` (Persona Vectors): pos trait >= t, neg trait < 100 - t, both coherence >= c.
- ``adaptive`` (BILLY's code): pos trait >= max(t, median of pos trait scores),
  neg trait <= min(100 - t, median of neg trait scores), both coherence >= c; medians per persona.

The coherence check is skipped, and the report says so, when no row has a coherence score.
A pair with a missing (None) score that is checked is dropped ("missing score (...)").
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import JudgeError, PersonaLensError
from .judges import Fittable, SpecOrPrompt, TraitScorer, coherence_scores

PAIR_FIELDS = ("pair_index", "question_index", "sample")
MODES = ("fixed", "adaptive")


class FilterInputError(PersonaLensError, ValueError):
    """Rows for filtering lack pair fields, have a bad polarity, or repeat a (pair, polarity)."""


def _num(x: float) -> str:
    return str(round(float(x), 2))


def _cut(x: float) -> str:
    return f"{float(x):g}"


@dataclass
class FilterReport:
    """The outcome of :func:`filter_pairs`: kept rows plus counts and a reason per dropped pair."""

    mode: str
    threshold: float
    coherence_threshold: float
    kept: list[dict] = field(default_factory=list)
    kept_pairs: list[dict] = field(default_factory=list)
    dropped: list[dict] = field(default_factory=list)
    unpaired: list[dict] = field(default_factory=list)
    coherence_checked: bool = True
    cutoffs: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def n_pairs(self) -> int:
        return len(self.kept_pairs) + len(self.dropped)

    @property
    def n_kept(self) -> int:
        return len(self.kept_pairs)

    @property
    def n_dropped(self) -> int:
        return len(self.dropped)

    @property
    def reasons(self) -> dict[tuple, str]:
        """Dropped pair key (persona, pair_index, question_index, sample) -> reason."""
        return {(d.get("persona"),) + tuple(d[f] for f in PAIR_FIELDS): d["reason"] for d in self.dropped}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able summary (kept pair keys, not the kept rows)."""
        return {
            "mode": self.mode,
            "threshold": self.threshold,
            "coherence_threshold": self.coherence_threshold,
            "coherence_checked": self.coherence_checked,
            "n_pairs": self.n_pairs,
            "n_kept": self.n_kept,
            "n_dropped": self.n_dropped,
            "n_unpaired_rows": len(self.unpaired),
            "cutoffs": self.cutoffs,
            "kept_pairs": [dict(k) for k in self.kept_pairs],
            "dropped": [dict(d) for d in self.dropped],
            "unpaired": [dict(u) for u in self.unpaired],
            "notes": list(self.notes),
        }

    def reason_counts(self) -> dict[str, int]:
        """How many dropped pairs each rule removed (a pair can fail several), numbers left out:
        ``{"neg trait >= cut": 12, "pos coherence < cut": 3, ...}``."""
        counts: dict[str, int] = {}
        for d in self.dropped:
            for reason in d.get("reasons", [d["reason"]]):
                rule = re.sub(r"-?\d+(\.\d+)?", "#", reason)
                counts[rule] = counts.get(rule, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))

    def summary(self) -> str:
        lines = [f"{self.mode} filter: kept {self.n_kept}/{self.n_pairs} pairs, dropped {self.n_dropped}"]
        for persona, cut in self.cutoffs.items():
            lines.append(f"  {persona}: pos >= {_cut(cut['pos'])}, neg {cut['neg_rule']} {_cut(cut['neg'])}")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


def _key(row: dict) -> tuple:
    try:
        return (row.get("persona"),) + tuple(row[f] for f in PAIR_FIELDS)
    except KeyError as exc:
        raise FilterInputError(f"row lacks the pair field {exc.args[0]!r}: {sorted(row)}") from None


def _key_dict(key: tuple) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if key[0] is not None:
        out["persona"] = key[0]
    out.update(zip(PAIR_FIELDS, key[1:]))
    return out


def _score(row: dict, column: str) -> float | None:
    value = row.get(column)
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if value != value else value  # NaN (pandas' missing) counts as missing


def filter_pairs(
    rows: Iterable[dict],
    mode: str = "fixed",
    threshold: float = 50,
    coherence_threshold: float = 50,
) -> FilterReport:
    """Keep the contrastive pairs that express the trait on the pos side only (see module doc)."""
    if mode not in MODES:
        raise FilterInputError(f"unknown filter mode {mode!r}; expected one of {MODES}")
    rows = list(rows)
    report = FilterReport(mode=mode, threshold=float(threshold), coherence_threshold=float(coherence_threshold))

    # -- pair rows up
    pairs: dict[tuple, dict[str, dict]] = {}
    for row in rows:
        polarity = row.get("polarity")
        if polarity not in ("pos", "neg"):
            raise FilterInputError(f"row {_key_dict(_key(row))} has polarity {polarity!r}; expected 'pos' or 'neg'")
        slot = pairs.setdefault(_key(row), {})
        if polarity in slot:
            raise FilterInputError(f"two {polarity} rows for pair {_key_dict(_key(row))}")
        slot[polarity] = row
    complete = {k: v for k, v in pairs.items() if len(v) == 2}
    for key, slot in pairs.items():
        if len(slot) != 2:
            (have,) = slot
            missing = "neg" if have == "pos" else "pos"
            report.unpaired.append({**_key_dict(key), "polarity": have, "reason": f"unpaired: no {missing} row"})
    if report.unpaired:
        report.notes.append(f"{len(report.unpaired)} row(s) without a partner were ignored")

    # -- coherence present at all?
    report.coherence_checked = any(_score(r, "coherence_score") is not None for r in rows)
    if not report.coherence_checked:
        report.notes.append("coherence check skipped: no row has a coherence score")

    # -- cut-offs per persona
    neg_default = 100.0 - float(threshold)
    personas = sorted({k[0] for k in complete}, key=lambda p: (p is None, str(p)))
    for persona in personas:
        pos_scores = [s for k, v in complete.items() if k[0] == persona if (s := _score(v["pos"], "trait_score")) is not None]
        neg_scores = [s for k, v in complete.items() if k[0] == persona if (s := _score(v["neg"], "trait_score")) is not None]
        cut: dict[str, Any]
        if mode == "fixed":
            cut = {"pos": float(threshold), "neg": neg_default, "neg_rule": "<"}
        else:
            pos_med = statistics.median(pos_scores) if pos_scores else None
            neg_med = statistics.median(neg_scores) if neg_scores else None
            cut = {
                "pos": max(float(threshold), pos_med) if pos_med is not None else float(threshold),
                "neg": min(neg_default, neg_med) if neg_med is not None else neg_default,
                "neg_rule": "<=",
                "pos_median": pos_med,
                "neg_median": neg_med,
            }
        report.cutoffs[str(persona) if persona is not None else "all"] = cut

    # -- decide
    kept_keys = set()
    for key, slot in complete.items():
        cut = report.cutoffs[str(key[0]) if key[0] is not None else "all"]
        reasons: list[str] = []
        pos, neg = _score(slot["pos"], "trait_score"), _score(slot["neg"], "trait_score")
        if pos is None:
            reasons.append("missing score (pos trait)")
        elif pos < cut["pos"]:
            why = f"pos trait {_num(pos)} < {_cut(cut['pos'])}"
            if mode == "adaptive":
                why += f" (adaptive: max({_cut(threshold)}, pos median {_fmt_opt(cut['pos_median'])}))"
            reasons.append(why)
        if neg is None:
            reasons.append("missing score (neg trait)")
        elif mode == "fixed" and neg >= cut["neg"]:
            reasons.append(f"neg trait {_num(neg)} >= {_cut(cut['neg'])}")
        elif mode == "adaptive" and neg > cut["neg"]:
            reasons.append(
                f"neg trait {_num(neg)} > {_cut(cut['neg'])}"
                f" (adaptive: min({_cut(neg_default)}, neg median {_fmt_opt(cut['neg_median'])}))"
            )
        if report.coherence_checked:
            for side in ("pos", "neg"):
                coh = _score(slot[side], "coherence_score")
                if coh is None:
                    reasons.append(f"missing score ({side} coherence)")
                elif coh < coherence_threshold:
                    reasons.append(f"{side} coherence {_num(coh)} < {_cut(coherence_threshold)}")
        if reasons:
            report.dropped.append({**_key_dict(key), "reasons": reasons, "reason": "; ".join(reasons)})
        else:
            kept_keys.add(key)
            report.kept_pairs.append(_key_dict(key))
    report.kept = [r for r in rows if _key(r) in kept_keys]
    return report


def _fmt_opt(x: float | None) -> str:
    return "n/a" if x is None else _cut(x)


# ------------------------------------------------------------------------------ judging


def judge_rows(
    rows: Sequence[dict],
    spec: SpecOrPrompt,
    judge: TraitScorer,
    coherence: bool = True,
    progress: bool = True,
) -> list[dict]:
    """Copies of ``rows`` with ``trait_score`` and ``coherence_score`` filled in by ``judge``.

    ``spec`` is the persona spec (its eval prompt is the trait prompt) or an eval-prompt string.
    With ``coherence=False`` (or a judge that is no :class:`CoherenceScorer`, like the embedding
    proxy) ``coherence_score`` is None, and :func:`filter_pairs` then skips the coherence check.

    A judge that learns from examples (:class:`Fittable`, the embedding proxy) is cross-fitted:
    questions are split into two halves, and each half is scored by a model fitted on the pos
    vs neg responses of the other half, so no response is scored by a model trained on it.
    """
    if judge is None:
        raise JudgeError("judge_rows needs a judge (got None: judge 'none' means no scoring)")
    rows = [dict(r) for r in rows]
    if not rows:
        return rows
    qa = [(str(r.get("question", "")), str(r.get("response") or "")) for r in rows]
    if isinstance(judge, Fittable):
        trait = _cross_fit(rows, judge)
    else:
        trait = judge.score_trait_many(spec, qa, progress=progress)
    coh = coherence_scores(judge, qa, progress=progress) if coherence else [None] * len(rows)
    for row, t, c in zip(rows, trait, coh):
        row["trait_score"] = t
        row["coherence_score"] = c
    return rows


def _cross_fit(rows: list[dict], judge: Fittable) -> list[float | None]:
    for r in rows:
        if r.get("polarity") not in ("pos", "neg"):
            raise FilterInputError(f"row has polarity {r.get('polarity')!r}; a fitted judge needs 'pos'/'neg'")
    for field_name in ("question_index", "pair_index", "sample"):
        values = list(dict.fromkeys(r.get(field_name) for r in rows))  # first-appearance order
        if len(values) >= 2:
            rank = {v: i for i, v in enumerate(values)}
            folds = [rank[r.get(field_name)] % 2 for r in rows]
            break
    else:
        raise JudgeError(
            "the embedding judge needs at least two questions (or pairs, or samples) to cross-fit; "
            "it will not score responses with a classifier trained on them"
        )
    texts = [str(r.get("response") or "") for r in rows]
    labels = [1 if r["polarity"] == "pos" else 0 for r in rows]
    return judge.cross_fit(texts, labels, folds)
