"""Analyses on top of persona vectors: projection (BILLY Eq. 5), monitoring, data screening,
fine-tuning shift and preventative steering (Persona Vectors)."""

from .monitor import MonitorSummary, monitor_file, monitor_scores, pearson
from .projection import (
    ProjectionResult,
    multi_role_system_prompt,
    project_deltas,
    projection_analysis,
    task_prompts,
    unit_directions,
)
from .screen import ScreenSummary, projection_diff, screen_demo_path, screen_file
from .shift import ShiftResult, finetuning_shift, preventative_steering

__all__ = [
    "MonitorSummary", "monitor_file", "monitor_scores", "pearson",
    "ProjectionResult", "multi_role_system_prompt", "project_deltas", "projection_analysis", "task_prompts",
    "unit_directions",
    "ScreenSummary", "projection_diff", "screen_demo_path", "screen_file",
    "ShiftResult", "finetuning_shift", "preventative_steering",
]
