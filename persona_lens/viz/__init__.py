"""Plotly figures for persona_lens: one function per figure, one style, offline output.

Every figure function takes plain data (lists, arrays, dicts, or an analysis' result object)
and returns a ``plotly.graph_objects.Figure`` styled by :func:`theme.style`;
:func:`save_figure` writes it as offline HTML (no CDN) with its numbers beside it.

Modules: :mod:`.theme` (palette, template, saving), :mod:`.sweep`, :mod:`.projection`,
:mod:`.monitor`, :mod:`.screen`, :mod:`.shift`, :mod:`.dose` (dose-response cards),
:mod:`.autotune` (Pareto front), :mod:`.judge` (calibrated-judge agreement), :mod:`.generic`
(histograms, bars, lines, heatmaps) and :mod:`.creativity`; the figure functions are also
importable from here.
"""

from .autotune import budget_by_rung, pareto_scatter
from .creativity import ablation_figure, efficiency_figure, scores_figure
from .dose import dose_figure
from .generic import grouped_bars, histogram, lines_per_layer, similarity_heatmap
from .judge import agreement_scatter
from .monitor import graded_scatter, monitor_scatter, monitor_scatter_figure, r_by_layer
from .projection import condition_label, projection_figure, projection_panels
from .screen import (
    leakage_figure,
    multi_figures,
    screen_histogram_figure,
    screening_histogram,
    top_rows_table,
    trait_distributions_figure,
    trait_means_figure,
)
from .shift import shift_figure, shift_per_layer
from .sweep import sweep_heatmap, sweep_norms, sweep_separation
from .theme import (
    PALETTE,
    color,
    figure_div,
    plotly_js,
    save_figure,
    static_export_status,
    style,
    template,
    write_table,
)

__all__ = [
    "agreement_scatter", "budget_by_rung", "dose_figure", "graded_scatter", "leakage_figure", "multi_figures",
    "pareto_scatter", "r_by_layer", "top_rows_table", "trait_distributions_figure", "trait_means_figure",
    "PALETTE", "ablation_figure", "color", "condition_label", "efficiency_figure", "figure_div", "grouped_bars",
    "histogram", "lines_per_layer", "monitor_scatter", "monitor_scatter_figure", "plotly_js", "projection_figure",
    "projection_panels", "save_figure", "scores_figure", "screen_histogram_figure", "screening_histogram",
    "shift_figure", "shift_per_layer", "similarity_heatmap", "static_export_status", "style", "sweep_heatmap",
    "sweep_norms", "sweep_separation", "template", "write_table",
]
