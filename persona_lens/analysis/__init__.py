"""Analyses on top of persona vectors: layer sweep, dose calibration and the multi-objective
autotuner, projection (BILLY Eq. 5), monitoring (incl. the graded-prompt experiment), single- and
multi-trait data screening, fine-tuning shift and preventative steering (Persona Vectors).

Each follows :mod:`.base`: ``<module>.run(model, <Name>Config(...), ...) -> <Name>Result`` with
``save(dir)`` / ``load(dir)``; figures come from ``persona_lens.viz.<module>.figures(result)``.
"""

from . import autotune, calibrate, monitor, projection, screen, shift, sweep
from .autotune import AutotuneConfig, AutotuneResult
from .base import AnalysisConfig, AnalysisResult
from .calibrate import CalibrateConfig, CalibrateResult
from .monitor import GradedMonitorConfig, GradedMonitorResult, MonitorConfig, MonitorResult, monitor_scores
from .projection import (
    ProjectionConfig,
    ProjectionResult,
    multi_role_system_prompt,
    project_deltas,
    task_prompts,
    unit_directions,
)
from .screen import (
    MultiScreenConfig,
    MultiScreenResult,
    ScreenConfig,
    ScreenResult,
    projection_diff,
    run_multi,
    screen_demo_path,
)
from .shift import ShiftConfig, ShiftResult, preventative_steering
from .sweep import SweepConfig, SweepResult

__all__ = [
    "AnalysisConfig", "AnalysisResult",
    "autotune", "AutotuneConfig", "AutotuneResult",
    "calibrate", "CalibrateConfig", "CalibrateResult",
    "monitor", "MonitorConfig", "MonitorResult", "monitor_scores", "GradedMonitorConfig", "GradedMonitorResult",
    "projection", "ProjectionConfig", "ProjectionResult", "multi_role_system_prompt", "project_deltas",
    "task_prompts", "unit_directions",
    "screen", "ScreenConfig", "ScreenResult", "projection_diff", "screen_demo_path",
    "MultiScreenConfig", "MultiScreenResult", "run_multi",
    "shift", "ShiftConfig", "ShiftResult", "preventative_steering",
    "sweep", "SweepConfig", "SweepResult",
]
