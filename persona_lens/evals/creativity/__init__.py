"""Creativity evaluation (BILLY, Pai et al. 2025): single agent, multi-role prompting, LLM discussion
and persona-vector steering on AUT / Instances / Similarities / Scientific.

``run_creativity(CreativityConfig(out=..., ...))`` or ``persona-lens eval creativity``.
Modules: ``tasks`` (benchmark formats + built-in task set), ``parse`` (ideas from free text),
``methods`` (sa, sa_t1, mrp, discussion, billy, single:NAME), ``judging`` (rubric prompts for an
LLM judge), ``metrics`` (scores, offline proxies, aggregation), ``harness``, ``figures``.
"""

from .harness import CreativityConfig, CreativityHarness, run_creativity
from .parse import parse_ideas
from .tasks import TASKS, TaskItem, load_tasks

__all__ = ["CreativityConfig", "CreativityHarness", "run_creativity", "parse_ideas", "TASKS", "TaskItem", "load_tasks"]
