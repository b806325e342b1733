"""Creativity evaluation (BILLY, Pai et al. 2025): single agent, multi-role prompting, LLM discussion
and persona-vector steering on AUT / Instances / Similarities / Scientific.

``run(model, CreativityConfig(...), out=DIR) -> CreativityResult`` (the pattern of
:mod:`persona_lens.analysis.base`) or ``persona-lens eval creativity``; figures:
:func:`persona_lens.viz.creativity.figures`. Modules: ``tasks`` (benchmark formats + built-in
task set), ``parse`` (ideas from free text), ``methods`` (sa, sa_t1, mrp, discussion, billy,
single:NAME), ``builders`` (vectors and steering of the methods), ``judging`` (rubric prompts for
an LLM judge), ``metrics`` (scores, offline proxies, aggregation), ``config``, ``result``,
``harness`` (generation, scoring, :func:`run`).
"""

from .config import DEFAULT_METHODS, CreativityConfig, parse_ablation, read_sweep
from .harness import CreativityHarness, run
from .parse import parse_ideas
from .result import CreativityResult
from .tasks import TASKS, TaskItem, load_tasks

__all__ = ["CreativityConfig", "CreativityHarness", "CreativityResult", "DEFAULT_METHODS", "TASKS", "TaskItem",
           "load_tasks", "parse_ablation", "parse_ideas", "read_sweep", "run"]
