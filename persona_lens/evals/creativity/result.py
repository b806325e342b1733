"""The creativity evaluation's result: per-response scores, the mean ± std table per task x
method, the efficiency ratios, and their files (``scores.jsonl``, ``results.csv``, ``results.md``)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...analysis.base import AnalysisResult
from ...io import atomic_write_text, iter_jsonl, json_safe
from .config import CreativityConfig
from .metrics import EFFICIENCY, METRICS, fmt, summarize

SCORES_FILE = "scores.jsonl"
TABLE_CSV = "results.csv"
TABLE_MD = "results.md"
TABLE_COLUMNS = ["task", "method", "metric", "mean", "std", "n", "proxy"]


def efficiency_ratios(overall_rows: Sequence[dict], num: str = "billy", den: str = "discussion") -> dict:
    """``num / den`` for each efficiency metric's mean (over all tasks)."""
    get = {(r["method"], r["metric"]): r["mean"] for r in overall_rows}
    out = {}
    for metric in EFFICIENCY:
        a, b = get.get((num, metric)), get.get((den, metric))
        if a is not None and b not in (None, 0) and not math.isnan(b):
            out[metric] = a / b
    return out


def score_table(scores: Sequence[dict]) -> tuple[list[dict], list[str], dict]:
    """(mean ± std rows per task x method x metric, plus task ``all``; the metrics present; the
    BILLY / discussion efficiency ratios)."""
    metric_names = [m for m in METRICS if any(m in s for s in scores)]
    long = summarize(scores, metric_names + list(EFFICIENCY))
    overall = summarize([{**s, "task": "all"} for s in scores], metric_names + list(EFFICIENCY))
    return long + overall, metric_names, efficiency_ratios(overall)


def markdown_report(rows, methods, tasks, metrics, ratios, judge_info, steer) -> str:
    get = {(r["task"], r["method"], r["metric"]): r for r in rows}
    lines = ["# Creativity evaluation", ""]
    lines.append(f"Judge: `{(judge_info or {}).get('judge')}`"
                 + (f" ({judge_info.get('samples')} samples, T={judge_info.get('temperature')}, "
                    f"{judge_info.get('mode')})" if judge_info and "samples" in judge_info else ""))
    if steer:
        lines.append(f"BILLY steering: layer {steer['layer']}, alpha {steer['alpha']}, positions "
                     f"{steer['positions']} ({steer['source']})")
    lines += ["", ("Cells: mean ± sample std over responses. Metrics marked *(proxy)* are offline "
                   "embedding proxies, not the paper's judge metrics."), ""]
    for task in list(tasks) + ["all"]:
        present = [m for m in metrics if any((task, meth, m) in get for meth in methods)]
        if not present:
            continue
        lines += [f"## {task}", ""]
        header = ["method"] + [METRICS[m][0] + (" *(proxy)*" if METRICS[m][1] else "") for m in present]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        for meth in methods:
            cells = [fmt(get[(task, meth, m)]["mean"], get[(task, meth, m)]["std"]) if (task, meth, m) in get else "—"
                     for m in present]
            lines.append("| " + " | ".join([meth] + cells) + " |")
        lines.append("")
    lines += ["## Efficiency (per query, all tasks)", ""]
    header = ["method"] + list(EFFICIENCY.values())
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for meth in methods:
        cells = [fmt(get[("all", meth, m)]["mean"], get[("all", meth, m)]["std"], 3 if m == "wall_s" else 1)
                 if ("all", meth, m) in get else "—" for m in EFFICIENCY]
        lines.append("| " + " | ".join([meth] + cells) + " |")
    if ratios:
        lines += ["", "BILLY / discussion: " + ", ".join(f"{EFFICIENCY[k]} × {v:.3g}" for k, v in ratios.items())]
    return "\n".join(lines) + "\n"


@dataclass
class CreativityResult(AnalysisResult):
    """``tasks``: items per task; ``methods``: the methods run (with the ablation's
    ``billy_k{k}``); ``steering``: BILLY's resolved layer, alpha, positions and their source
    (None without a steered method); ``judge``: the judge's settings; ``table``: mean ± sample
    std per task (and ``all``) x method x metric; ``metrics``: the quality metrics present;
    ``ratios``: BILLY / discussion per efficiency metric; ``scores``: one row per response
    (``scores.jsonl`` beside ``result.json``); ``responses``: the generated rows (in memory
    only: they live in the run's resumable ``responses.jsonl``)."""

    config_type = CreativityConfig
    config: CreativityConfig
    tasks: dict[str, int]
    methods: list[str]
    n_responses: int
    steering: dict | None
    judge: dict
    table: list[dict]
    metrics: list[str]
    ratios: dict
    model_id: str = ""
    wall_s: float = 0.0
    scores: list[dict] = field(default_factory=list)
    responses: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        skip = ("config", "scores", "responses")
        return json_safe({k: v for k, v in self.__dict__.items() if k not in skip})

    def markdown(self) -> str:
        """The ``results.md`` table: every task x method cell and the efficiency per method."""
        return markdown_report(self.table, self.methods, list(self.tasks), self.metrics, self.ratios, self.judge,
                               self.steering)

    def save(self, directory: str | os.PathLike) -> Path:
        """``config.json``, ``result.json``, ``scores.jsonl``, ``results.csv`` and ``results.md``."""
        out = super().save(directory)
        atomic_write_text(out / SCORES_FILE,
                          "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in json_safe(self.scores)))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=TABLE_COLUMNS)
        writer.writeheader()
        writer.writerows(self.table)
        atomic_write_text(out / TABLE_CSV, buf.getvalue())
        atomic_write_text(out / TABLE_MD, self.markdown())
        return out

    @classmethod
    def load(cls, directory: str | os.PathLike) -> CreativityResult:
        result = super().load(directory)
        if (Path(directory) / SCORES_FILE).exists():
            result.scores = list(iter_jsonl(Path(directory) / SCORES_FILE))
        return result
