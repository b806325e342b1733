"""Analyses on top of persona vectors: layer sweep, projection (BILLY Eq. 5), monitoring, data
screening, fine-tuning shift and preventative steering (Persona Vectors).

Each follows :mod:`.base`: ``<module>.run(model, <Name>Config(...), ...) -> <Name>Result`` with
``save(dir)`` / ``load(dir)``; figures come from ``persona_lens.viz.<module>.figures(result)``.
"""

from . import monitor, projection, screen, shift, sweep
from .base import AnalysisConfig, AnalysisResult
from .monitor import MonitorConfig, MonitorResult, monitor_scores
from .projection import (
    ProjectionConfig,
    ProjectionResult,
    multi_role_system_prompt,
    project_deltas,
    task_prompts,
    unit_directions,
)
from .screen import ScreenConfig, ScreenResult, projection_diff, screen_demo_path
from .shift import ShiftConfig, ShiftResult, preventative_steering
from .sweep import SweepConfig, SweepResult

__all__ = [
    "AnalysisConfig", "AnalysisResult",
    "monitor", "MonitorConfig", "MonitorResult", "monitor_scores",
    "projection", "ProjectionConfig", "ProjectionResult", "multi_role_system_prompt", "project_deltas",
    "task_prompts", "unit_directions",
    "screen", "ScreenConfig", "ScreenResult", "projection_diff", "screen_demo_path",
    "shift", "ShiftConfig", "ShiftResult", "preventative_steering",
    "sweep", "SweepConfig", "SweepResult",
]
