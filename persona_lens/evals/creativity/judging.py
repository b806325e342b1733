"""LLM-judge scoring of creativity answers: originality and elaboration per idea, categories.

Works with any :class:`persona_lens.judges.TextGenerator` (``.complete(messages, temperature,
max_tokens) -> str``): ``OpenAIJudge`` — the paper's setting is ``openai:gpt-4o-mini`` with 3
samples — or ``LocalJudge``. The rubric prompts below are persona_lens' own.

Requests (``mode="batch"``, the default): per idea list and judge sample, one originality and
one elaboration request listing every idea and asking for ``<idea number>: <score 1-5>`` lines,
and one category request (``<idea number>: <category>``, ``IRRELEVANT`` for off-task ideas).
``mode="per_idea"`` sends one originality/elaboration request per idea (LLM-Discussion's way;
more requests, the same rubric). With ``samples > 1`` the judge samples at ``temperature``
(default 1.0) and the scores are averaged: per idea over samples, then over ideas.

Each request has a content hash (judge name, messages, sample index); replies are kept in a
JSONL file by the harness so an interrupted run resumes without asking again.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from ...judges.base import TextGenerator
from ...stats import nanmean
from .metrics import dedupe, per_idea_means

SYSTEM_PROMPT = (
    "You are an expert rater of divergent-thinking (creativity) tests. You follow the rubric exactly "
    "and answer only in the requested format."
)

RUBRICS = {
    "originality": (
        "ORIGINALITY: how uncommon, surprising and clever the idea is compared with what most people "
        "would answer.\n"
        "1 = very common: one of the first things almost anyone would say.\n"
        "2 = somewhat common: a small twist on an obvious answer.\n"
        "3 = moderately original: not obvious, but not surprising either.\n"
        "4 = original: surprising and clever; few people would think of it.\n"
        "5 = highly original: unexpected and inventive, yet it still makes sense for the task.\n"
        "An idea that does not answer the task gets 1."
    ),
    "elaboration": (
        "ELABORATION: how much useful detail the idea gives about what it is, how it would work, or why "
        "it fits.\n"
        "1 = a bare word or phrase with no detail.\n"
        "2 = a short idea with minimal detail.\n"
        "3 = the idea is explained with some detail on how or why.\n"
        "4 = well developed: clear details on how it works, what it needs or why it helps.\n"
        "5 = richly elaborated: specific, vivid details, steps or consequences.\n"
        "Judge the amount and quality of detail, not whether the idea is original."
    ),
}

CATEGORY_INSTRUCTIONS = (
    "Group the ideas below into categories. A category is a distinct kind of use, approach or "
    "perspective (for example, for uses of a brick: building, art, exercise, weight, heat storage). "
    "Use the same category name for ideas of the same kind and a different name for ideas of a "
    "different kind. Write IRRELEVANT as the category of an idea that does not answer the task."
)

IRRELEVANT = "irrelevant"


def _numbered(ideas: Sequence[str]) -> str:
    return "\n".join(f"{i}. {idea}" for i, idea in enumerate(ideas, 1))


def scores_messages(criterion: str, question: str, ideas: Sequence[str]) -> list[dict]:
    """One request rating every idea of a list on ``criterion`` (1-5)."""
    user = (
        f"Rate each idea written in answer to a creativity task.\n\nTask: {question}\n\n"
        f"Rubric (1-5):\n{RUBRICS[criterion]}\n\n"
        f"Rate each idea on its own, not relative to the others.\n\nIdeas:\n{_numbered(ideas)}\n\n"
        f"Reply with exactly one line per idea, in order, in the form \"<idea number>: <score>\" "
        f"(a whole number from 1 to 5), and nothing else."
    )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def single_idea_messages(criterion: str, question: str, idea: str) -> list[dict]:
    """One request rating a single idea on ``criterion`` (1-5)."""
    user = (
        f"Rate an idea written in answer to a creativity task.\n\nTask: {question}\n\n"
        f"Rubric (1-5):\n{RUBRICS[criterion]}\n\nIdea: {idea}\n\n"
        f"Reply with a single whole number from 1 to 5 and nothing else."
    )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def categories_messages(question: str, ideas: Sequence[str]) -> list[dict]:
    user = (
        f"{CATEGORY_INSTRUCTIONS}\n\nTask: {question}\n\nIdeas:\n{_numbered(ideas)}\n\n"
        f"Reply with exactly one line per idea, in order, in the form \"<idea number>: <category name>\", "
        f"and nothing else."
    )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


# ----------------------------------------------------------------------------- reply parsing

_SCORE_LINE = re.compile(
    r"^\W*(?:idea\s*)?#?(\d{1,3})\s*(?:[:.)\]=\-–—]|\s)\s*\**\s*(?:score\s*[:=]?\s*)?\**\s*(\d(?:\.\d+)?)\b",
    re.IGNORECASE,
)
# "<n>. <idea text echoed> ... 4" / "... 4/5": the idea number first, the score last
_ECHO_LINE = re.compile(r"^\W*(?:idea\s*)?#?(\d{1,3})\s*[:.)\]\-–—]\s*(.*)$", re.IGNORECASE)
_LAST_SCORE = re.compile(r"(?<![\d.])(\d(?:\.\d+)?)(?:\s*/\s*5)?(?![\d.])")
_CATEGORY_LINE = re.compile(r"^\W*(?:idea\s*)?#?(\d{1,3})\s*[:.)\]=\-–—]\s*(.+?)\s*$", re.IGNORECASE)


def _valid(score: float, lo: float = 1.0, hi: float = 5.0) -> float | None:
    return float(score) if lo <= score <= hi else None


def parse_scores(text: str | None, n: int) -> list[float | None]:
    """Per-idea scores 1-5 from ``"<n>: <score>"`` lines (None where missing or out of range).

    Falls back to the bare numbers 1-5 in order when no numbered line is found and the reply
    holds exactly ``n`` of them (``"4, 3, 5"``).
    """
    out: list[float | None] = [None] * n
    if not text:
        return out
    found = False
    for line in text.splitlines():
        m = _SCORE_LINE.match(line.strip())
        if m:
            idx, value = int(m.group(1)) - 1, float(m.group(2))
        else:
            echo = _ECHO_LINE.match(line.strip())
            scores = _LAST_SCORE.findall(echo.group(2)) if echo else []
            if echo is None or not scores:
                continue
            idx, value = int(echo.group(1)) - 1, float(scores[-1])
        if 0 <= idx < n and out[idx] is None:
            out[idx] = _valid(value)
            found = True
    if not found:
        bare = [float(x) for x in re.findall(r"(?<![\d.])([1-5])(?![\d.])", text)]
        if len(bare) == n:
            out = [_valid(x) for x in bare]
    return out


def parse_single_score(text: str | None) -> float | None:
    """The first number 1-5 of a one-idea reply."""
    if not text:
        return None
    m = re.search(r"(?<![\d.])([1-5](?:\.\d+)?)(?![\d])", text)
    return _valid(float(m.group(1))) if m else None


def _norm_category(text: str) -> str:
    t = re.sub(r"[*_`\"']", "", text).strip().lower()
    t = re.sub(r"[^\w\s&/-]", " ", t)
    return re.sub(r"\s+", " ", t).strip()


def parse_categories(text: str | None, n: int) -> list[str | None]:
    """Per-idea category names (normalised; ``"irrelevant"`` for off-task ideas)."""
    out: list[str | None] = [None] * n
    if not text:
        return out
    for line in text.splitlines():
        m = _CATEGORY_LINE.match(line.strip())
        if not m:
            continue
        idx = int(m.group(1)) - 1
        if 0 <= idx < n and out[idx] is None:
            cat = _norm_category(m.group(2))
            out[idx] = IRRELEVANT if cat.startswith(IRRELEVANT) else (cat or None)
    return out


# ----------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class JudgeRequest:
    criterion: str  # originality | elaboration | categories
    sample: int
    idea: int | None  # per_idea mode: the idea index; else None
    messages: tuple  # tuple of (role, content) pairs (hashable)
    key: str  # content hash + sample: the resume key

    @property
    def message_dicts(self) -> list[dict]:
        return [{"role": r, "content": c} for r, c in self.messages]


def request_key(judge_name: str, messages: Sequence[dict], sample: int, temperature: float) -> str:
    blob = json.dumps({"judge": judge_name, "messages": list(messages), "sample": sample,
                       "temperature": temperature}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha1(blob.encode("utf-8")).hexdigest()


@dataclass
class ListJudgment:
    """Judge results for one idea list (all samples)."""

    n_ideas: int
    originality: list[list[float | None]] = field(default_factory=list)  # [sample][idea]
    elaboration: list[list[float | None]] = field(default_factory=list)
    categories: list[list[str | None]] = field(default_factory=list)  # [sample][idea]

    def metrics(self, kept: Sequence[int] | None = None) -> dict[str, float]:
        """originality/elaboration (mean over ideas of the mean over samples), flexibility and
        fluency (distinct relevant ideas: ``kept`` = the de-duplicated idea indices)."""
        kept = list(range(self.n_ideas)) if kept is None else list(kept)
        out: dict[str, float] = {}
        if self.originality:
            out["originality"] = nanmean(per_idea_means(self.originality))
        if self.elaboration:
            out["elaboration"] = nanmean(per_idea_means(self.elaboration))
        if self.categories:
            flex, flu = [], []
            for cats in self.categories:
                names = {c for c in cats if c and c != IRRELEVANT}
                flex.append(float(len(names)))
                flu.append(float(sum(1 for i in kept if i < len(cats) and cats[i] != IRRELEVANT)))
            out["flexibility"] = nanmean(flex)
            out["fluency"] = nanmean(flu)
        return out


class CreativityJudge:
    """Builds the rubric requests for idea lists, sends the missing ones, parses the replies."""

    CRITERIA = ("originality", "elaboration", "categories")

    def __init__(
        self,
        judge: TextGenerator,
        *,
        samples: int = 3,
        temperature: float | None = None,
        mode: str = "batch",
        criteria: Sequence[str] = CRITERIA,
        max_workers: int | None = None,
    ):
        if not isinstance(judge, TextGenerator):
            raise TypeError(f"the creativity judge needs a text generator (.complete()); got {type(judge).__name__}")
        if mode not in ("batch", "per_idea"):
            raise ValueError("mode must be 'batch' or 'per_idea'")
        if samples < 1:
            raise ValueError("samples must be >= 1")
        self.judge = judge
        self.name = judge.name
        self.samples = int(samples)
        self.temperature = float(temperature if temperature is not None else (1.0 if samples > 1 else 0.0))
        self.mode = mode
        self.criteria = tuple(criteria)
        self.max_workers = int(max_workers or judge.max_concurrency)

    def describe(self) -> dict:
        return {"judge": self.name, "samples": self.samples, "temperature": self.temperature, "mode": self.mode,
                "criteria": list(self.criteria)}

    def requests(self, question: str, ideas: Sequence[str]) -> list[JudgeRequest]:
        if not ideas:
            return []
        out = []
        for s in range(self.samples):
            for criterion in self.criteria:
                if criterion == "categories":
                    msgs = [categories_messages(question, ideas)]
                    idx: list[int | None] = [None]
                elif self.mode == "batch":
                    msgs = [scores_messages(criterion, question, ideas)]
                    idx = [None]
                else:
                    msgs = [single_idea_messages(criterion, question, idea) for idea in ideas]
                    idx = list(range(len(ideas)))
                for m, i in zip(msgs, idx):
                    key = request_key(self.name, m, s, self.temperature)
                    out.append(JudgeRequest(criterion, s, i, tuple((d["role"], d["content"]) for d in m), key))
        return out

    def max_tokens(self, request: JudgeRequest, n_ideas: int) -> int:
        if request.criterion == "categories":
            return 16 * n_ideas + 64
        if request.idea is not None:
            return 8
        return 8 * n_ideas + 32

    def run(self, requests: Sequence[tuple[JudgeRequest, int]], done: dict[str, str],
            on_reply: Callable[[JudgeRequest, str], None] | None = None, progress: bool = False) -> dict[str, str]:
        """Send the requests whose key is not in ``done`` (concurrently); returns key -> reply."""
        replies = dict(done)
        todo: dict[str, tuple[JudgeRequest, int]] = {}
        for req, n in requests:
            if req.key not in replies and req.key not in todo:
                todo[req.key] = (req, n)
        if not todo:
            return replies
        lock = threading.Lock()

        def ask(item: tuple[JudgeRequest, int]) -> tuple[JudgeRequest, str]:
            req, n = item
            text = self.judge.complete(req.message_dicts, temperature=self.temperature,
                                       max_tokens=self.max_tokens(req, n))
            return req, text

        with ThreadPoolExecutor(max_workers=max(1, min(self.max_workers, len(todo)))) as pool, \
                tqdm(total=len(todo), desc=f"judge {self.name}", leave=False, disable=not progress) as bar:
            futures = [pool.submit(ask, item) for item in todo.values()]
            for fut in as_completed(futures):
                req, text = fut.result()
                with lock:
                    replies[req.key] = text
                    if on_reply is not None:
                        on_reply(req, text)
                bar.update(1)
        return replies

    def assemble(self, ideas: Sequence[str], replies: dict[str, str], question: str) -> ListJudgment:
        """Parse the replies of one list's requests into a :class:`ListJudgment`."""
        n = len(ideas)
        result = ListJudgment(n)
        if not n:
            return result
        per: dict[tuple[str, int], list] = {}
        for req in self.requests(question, ideas):
            text = replies.get(req.key)
            if req.criterion == "categories":
                per[("categories", req.sample)] = parse_categories(text, n)
            elif req.idea is None:
                per[(req.criterion, req.sample)] = parse_scores(text, n)
            else:
                per.setdefault((req.criterion, req.sample), [None] * n)[req.idea] = parse_single_score(text)
        for s in range(self.samples):
            if "originality" in self.criteria:
                result.originality.append(per.get(("originality", s), [None] * n))
            if "elaboration" in self.criteria:
                result.elaboration.append(per.get(("elaboration", s), [None] * n))
            if "categories" in self.criteria:
                result.categories.append(per.get(("categories", s), [None] * n))
        return result


def judge_lists(cj: CreativityJudge, lists: Sequence[tuple[str, Sequence[str]]],
                embeddings: Sequence | None = None, done: dict[str, str] | None = None,
                on_reply: Callable[[JudgeRequest, str], None] | None = None,
                progress: bool = False) -> list[dict[str, float]]:
    """Judge metrics for each ``(question, ideas)``; ``embeddings[i]`` (optional) for dedupe."""
    reqs = [(r, len(ideas)) for q, ideas in lists for r in cj.requests(q, ideas)]
    replies = cj.run(reqs, done or {}, on_reply=on_reply, progress=progress)
    out = []
    for i, (q, ideas) in enumerate(lists):
        kept = dedupe(ideas, embeddings[i] if embeddings is not None else None)
        out.append(cj.assemble(ideas, replies, q).metrics(kept))
    return out
